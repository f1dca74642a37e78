"""`--storage s3://...` against a real S3 server process (moto_server on 127.0.0.1): an
in-process run writes its checkpoints into the bucket, records the best one on its MLflow run,
and exports from there. Before the storage contract, `Path("s3://b/x")` made it a local folder
named `s3:`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import start_server

pytestmark = pytest.mark.slow

BUCKET = "waldo"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """`moto_server`, a real S3-compatible HTTP server, on a free port; yields its URL."""
    moto = str(Path(sys.executable).parent / "moto_server")
    server = start_server(lambda port: [moto, "-H", "127.0.0.1", "-p", str(port)],
                          workdir=tmp_path_factory.mktemp("moto"), ready="/moto-api/")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """The environment a user sets for MinIO, pointing at moto; a fresh bucket; its client."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "waldo-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "waldo-test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def test_in_process_run_checkpoints_into_the_bucket_and_exports_from_it(s3, in_tmp):
    from mlflow.tracking import MlflowClient

    from training.pipeline import run
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
