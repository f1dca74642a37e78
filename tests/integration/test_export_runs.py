"""Exporting trained runs from a local MLflow store: `waldo export --run` through the run's
best-checkpoint record, int8 and fp16 against fp32, local registration (never colliding with a
local export), and the failures that must leave nothing written or registered.

cnn and lenet5 are the session's `trained_run`s (each trained once, in a folder of its own with
its ./mlflow.db; the run records its best checkpoint, `training.tracking.storage`); a test that needs
the run's local store works in that folder (`in_folder`); everything else is `export_run` or
the CLI.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings

import onnx
import pytest
from mlflow.tracking import MlflowClient
from onnx import numpy_helper
from support import DIGITS_CNN, TrainedRun, error_line, in_folder, waldo_main
from support.tasks import BatchDependent

import training.export.precision as precision
import training.export.source as source
from serving.modelcard import CARD_FILE, MODEL_FILE, ModelCard
from training.errors import WaldoError
from training.export import export_run
from training.spec import ExportSpec, TrainSpec
from training.tasks import load_task_file
from training.tracking import storage

warnings.filterwarnings("ignore", ".*does not have many workers.*")


# The two networks of this file, trained on digits until they learned (val_acc > 0.9), so that
# int8 is judged on such networks: the cnn is the one the session also serves (`model_repo`).
DIGITS = {"cnn": DIGITS_CNN, "lenet5": dict(model="lenet5", data="digits", epochs=10)}


@pytest.fixture
def cnn(trained_run) -> TrainedRun:
    return trained_run(**DIGITS["cnn"])


@pytest.fixture
def lenet5(trained_run) -> TrainedRun:
    return trained_run(**DIGITS["lenet5"])


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    return waldo_main(capsys, "export", *argv)


def registered(tracking_uri: str) -> list[str]:
    return [m.name for m in MlflowClient(tracking_uri).search_registered_models()]


def hand_made_run(uri: str, tags: dict[str, str], artifact: str | None = None) -> str:
    """A finished run in the `waldo` experiment with these tags (and a checkpoint artifact)."""
    client = MlflowClient(uri)
    run_id = client.create_run(client.get_experiment_by_name("waldo").experiment_id).info.run_id
    if artifact is not None:
        client.log_artifact(run_id, artifact, storage.CHECKPOINT_ARTIFACT_DIR)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id)
    return run_id


def test_export_a_run_into_the_repository(cnn, capsys, tmp_path):
    out = tmp_path / "models"
    with in_folder(cnn.folder):  # `--run` without `--tracking-uri`: the folder's ./mlflow.db
        code, stdout, err = run_cli(capsys, "--run", cnn.run_id, "--output", str(out))
        assert code == 0, err
        folder = out / "cnn" / "1"
        card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
        task = load_task_file(cnn.checkpoint)
        assert {p.name for p in folder.iterdir()} == {MODEL_FILE, CARD_FILE}
        model = onnx.load(folder / MODEL_FILE)
        assert [o.name for o in card.outputs] == ["logits"]  # the prediction, then the extras
        assert [o.name for o in model.graph.output] == ["logits", *card.explain.shapes()]
        assert card.source_run == cnn.run_id and card.version == "1" and card.opset == 18
        assert card.precision == "fp32" and card.labels == [str(d) for d in range(10)]
        assert card.input.mean == list(task.hparams.mean) and card.input.height == task.hparams.image_size
        assert card.metrics["test_acc"] == pytest.approx(cnn.result.metrics["test_acc"])
        assert "val_loss" in card.metrics  # the monitored value of the exported (best) epoch
        assert 0 <= card.metrics["onnx_max_abs_diff"] <= 1e-4
        assert "exported cnn version 1" in stdout and str(folder / MODEL_FILE) in stdout

        code, stdout, err = run_cli(capsys, "--run", cnn.run_id, "--output", str(out))
        assert code == 0 and (out / "cnn" / "2" / MODEL_FILE).is_file(), err
        assert json.loads((out / "cnn" / "2" / CARD_FILE).read_text())["version"] == "2"
        assert not registered(cnn.result.tracking_uri)  # no --publish, nothing in the registry


def test_the_recorded_artifact_stands_in_for_a_lost_storage_location(cnn, tmp_path):
    uri = cnn.result.tracking_uri
    lost = str(tmp_path / "gone" / "best.ckpt")
    copy = tmp_path / "best.ckpt"
    shutil.copyfile(cnn.checkpoint, copy)
    moved = hand_made_run(uri, {storage.BEST_CHECKPOINT_TAG: lost,
                                storage.BEST_ARTIFACT_TAG: "best/best.ckpt"}, artifact=str(copy))
    with in_folder(cnn.folder):
        result = export_run(ExportSpec(run=moved, output=str(tmp_path / "models")))
        assert result.card.source_run == moved and result.version == 1
        assert result.checkpoint.name == "best.ckpt" and str(result.checkpoint) != lost

        only_lost = hand_made_run(uri, {storage.BEST_CHECKPOINT_TAG: lost})
        with pytest.raises(WaldoError, match=re.escape(f"run {only_lost}: {lost} does not exist")):
            export_run(ExportSpec(run=only_lost, output=str(tmp_path / "other")))
    assert not (tmp_path / "other").exists()


def test_export_a_checkpoint_with_dynamo_name_and_opset(lenet5, in_tmp, capsys):
    code, stdout, err = run_cli(capsys, "--checkpoint", str(lenet5.checkpoint),
                                "--name", "digits-lenet", "--opset", "20", "--exporter",
                                "dynamo", "--output", str(in_tmp))
    assert code == 0, err
    model = onnx.load(in_tmp / "digits-lenet" / "1" / MODEL_FILE)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {20}
    card = json.loads((in_tmp / "digits-lenet" / "1" / CARD_FILE).read_text())
    assert card["name"] == "digits-lenet" and card["source_run"] is None
    assert "dynamo exporter" in stdout


@pytest.mark.parametrize("model", ["cnn", "lenet5"])
def test_int8_loses_at_most_one_point_on_digits(trained_run, model, tmp_path):
    run = trained_run(**DIGITS[model])
    with in_folder(run.folder):
        result = export_run(ExportSpec(run=run.run_id, precision="int8", output=str(tmp_path)))
    metrics = result.card.metrics
    drop = metrics["val_acc_fp32"] - metrics["val_acc"]
    print(f"\n{model} int8: val_acc {metrics['val_acc']:.4f}, fp32 {metrics['val_acc_fp32']:.4f}"
          f", drop {100 * drop:+.2f} points")
    assert metrics["val_acc_fp32"] > 0.9  # trained for real
    assert drop <= 0.01
    assert result.card.precision == "int8" and result.data == "digits"
    assert any("int8 on the digits validation split" in line for line in result.summary())
    model_proto = onnx.load(result.model_path)
    assert "QuantizeLinear" in {n.op_type for n in model_proto.graph.node}
    inputs = [i.type.tensor_type.elem_type for i in model_proto.graph.input]
    assert inputs == [onnx.TensorProto.FLOAT]


def test_fp16_halves_the_file_and_keeps_accuracy(lenet5, tmp_path):
    with in_folder(lenet5.folder):
        fp32 = export_run(ExportSpec(run=lenet5.run_id, output=str(tmp_path)))
        # The data to score on may come from the caller's TrainSpec instead of the run's spec.yaml.
        fp16 = export_run(ExportSpec(run=lenet5.run_id, precision="fp16", output=str(tmp_path)),
                          train_spec=TrainSpec(model="lenet5"))
    assert fp16.version == fp32.version + 1
    assert fp16.model_path.stat().st_size < 0.6 * fp32.model_path.stat().st_size
    assert fp16.card.metrics["val_acc_fp32"] - fp16.card.metrics["val_acc"] <= 0.01


def test_a_reduced_model_that_loses_accuracy_is_refused(cnn, tmp_path, monkeypatch):
    real = precision.reduce_precision

    def broken(model, precision, calibration=()):
        reduced = real(model, "fp16")
        for tensor in reduced.graph.initializer:  # scramble the weights: accuracy collapses
            if len(tensor.dims) > 1:
                values = numpy_helper.to_array(tensor)
                tensor.CopyFrom(numpy_helper.from_array(values[..., ::-1].copy(), tensor.name))
        return reduced

    monkeypatch.setattr(precision, "reduce_precision", broken)
    with in_folder(cnn.folder), pytest.raises(WaldoError, match=r"fp16 loses [\d.]+ points of val_acc"):
        export_run(ExportSpec(run=cnn.run_id, precision="fp16", output=str(tmp_path), publish=True))
    assert not list(tmp_path.rglob(MODEL_FILE))
    assert not registered(cnn.result.tracking_uri)


def test_register_locally_never_collides_with_a_local_export(lenet5, capsys, tmp_path, monkeypatch):
    import mlflow

    uri = lenet5.result.tracking_uri
    out = tmp_path / "models"
    # Another folder, and another process-wide store: `--tracking-uri` alone says where to
    # register (MLflow resolves a new version's source through the process-wide one).
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    try:
        with in_folder(tmp_path):
            code, stdout, err = run_cli(capsys, "--run", lenet5.run_id, "--output", str(out),
                                        "--register", "--alias", "production", "--tracking-uri", uri)
    finally:
        mlflow.set_tracking_uri(None)
    assert code == 0, err
    with in_folder(lenet5.folder):
        client = MlflowClient(uri)
        mv = client.get_model_version_by_alias("lenet5", "production")
        assert (str(mv.version), mv.run_id) == ("1", lenet5.run_id)
        assert "registered models:/lenet5/1" in stdout and "verdict: passed" in stdout
        assert "alias 'production' -> version 1" in stdout
        assert not out.exists()  # published versions live in the registry only

        # A local export (without --publish) holds the number MLflow hands out next.
        (out / "lenet5" / "2").mkdir(parents=True)
        (out / "lenet5" / "2" / MODEL_FILE).write_bytes(b"a local export")
        code, stdout, err = run_cli(capsys, "--run", lenet5.run_id, "--output", str(out),
                                    "--alias", "production")
    assert code == 0, err
    versions = client.search_model_versions("name='lenet5'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    # The same run scores the same as the holder: no worse, so the gate lets it through.
    assert str(client.get_model_version_by_alias("lenet5", "production").version) == "2"
    assert (out / "lenet5" / "2" / MODEL_FILE).read_bytes() == b"a local export"
    assert [p.name for p in (out / "lenet5").iterdir()] == ["2"]
    client.delete_registered_model("lenet5")  # leave the store as the other tests expect


# --- user errors that need a store: exit 2, one line, nothing written or registered ----------
def test_a_run_without_checkpoint_record(cnn, capsys, tmp_path):
    uri = cnn.result.tracking_uri
    empty = hand_made_run(uri, {})
    with in_folder(cnn.folder):
        code, _, err = run_cli(capsys, "--run", empty, "--register", "--alias", "production",
                               "--output", str(tmp_path))
    line = error_line(err, "export")
    assert code == 2 and empty in line and "no checkpoint" in line
    assert storage.BEST_CHECKPOINT_TAG in line
    assert not registered(uri) and not any(tmp_path.iterdir())


def test_an_unknown_run(cnn, capsys, tmp_path):
    with in_folder(cnn.folder):
        code, _, err = run_cli(capsys, "--run", "0123456789abcdef0123456789abcdef", "--publish",
                               "--output", str(tmp_path))
    line = error_line(err, "export")
    assert code == 2 and "unknown run" in line and "0123456789abcdef" in line
    assert not any(tmp_path.iterdir()) and not registered(cnn.result.tracking_uri)


def test_parity_failure_through_the_cli_writes_and_registers_nothing(cnn, capsys, tmp_path,
                                                                     monkeypatch):
    def load_batch_dependent(path):
        task = load_task_file(path)
        task.net = BatchDependent(task.net)
        return task

    monkeypatch.setattr(source, "load_task_file", load_batch_dependent)
    with in_folder(cnn.folder):
        code, stdout, err = run_cli(capsys, "--run", cnn.run_id, "--register", "--alias",
                                    "production", "--output", str(tmp_path))
    line = error_line(err, "export")
    assert code == 2 and "parity check failed" in line and "= 1 " in line
    assert not any(tmp_path.iterdir()) and not registered(cnn.result.tracking_uri)
    assert stdout == ""
