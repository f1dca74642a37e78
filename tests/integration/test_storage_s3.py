"""`--storage s3://...` against a real S3 server process (moto_server on 127.0.0.1): an
in-process run writes its checkpoints into the bucket, records the best one on its MLflow run,
and exports from there. Before the storage contract, `Path("s3://b/x")` made it a local folder
named `s3:`."""

from __future__ import annotations

import pytest
from support import S3_BUCKET as BUCKET  # the `s3` fixture's bucket

pytestmark = pytest.mark.trains


def test_in_process_run_checkpoints_into_the_bucket_and_exports_from_it(s3, in_tmp):
    from mlflow.tracking import MlflowClient

    from training.running.pipeline import run
    from training.spec import TrainSpec

    result = run(TrainSpec(model="cnn", data="digits", epochs=2, progress_bar=False, storage=f"s3://{BUCKET}/runs",
                           experiment="s3-storage", export=True))
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    prefix = f"runs/{result.run_id}/checkpoints"
    assert {f"{prefix}/best.ckpt", f"{prefix}/last.ckpt"} <= keys, keys
    assert not (in_tmp / "s3:").exists()
    # The one local copy is the run's MLflow artifact (./mlruns with the default store).
    assert [p.relative_to(in_tmp).parts[0] for p in in_tmp.rglob("*.ckpt")] == ["mlruns"]
    tags = MlflowClient(result.tracking_uri).get_run(result.run_id).data.tags
    assert tags["waldo.best_checkpoint"] == f"s3://{BUCKET}/{prefix}/best.ckpt" == result.best_checkpoint
    # The export read the recorded checkpoint and wrote a checked ONNX version locally.
    assert result.export is not None and result.export.model_path.is_file()
    assert result.export.card.source_run == result.run_id
