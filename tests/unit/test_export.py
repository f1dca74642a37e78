"""ONNX export: every registered network for both tasks passes parity with torch; the file,
its ModelCard and the repository layout; int8/fp16 against fp32; and the failures that must
leave nothing written or registered.

Networks are built at each model's smallest input size with few classes, so that even VGG
exports in seconds (its 100M-parameter classifier does not shrink, though).
"""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from mlflow.tracking import MlflowClient
from onnx import numpy_helper
from torch import nn

import training.export as export
import training.precision as precision
from serving.modelcard import CARD_FILE, MODEL_FILE, ONNX_METADATA_KEY, ModelCard
from training.cli import main
from training.errors import WaldoError
from training.export import export_run, export_task, ort_session, write_version
from training.models import get_model_info, list_models
from training.spec import TrainSpec
from training.tasks import TASKS, load_task_file
from training.train import train

warnings.filterwarnings("ignore", ".*does not have many workers.*")

NUM_CLASSES = 3


def build(task: str, model: str, **model_args):
    """A randomly initialized task at the model's smallest input size."""
    info = get_model_info(model)
    torch.manual_seed(0)
    return TASKS[task](model_name=model, num_classes=NUM_CLASSES, in_channels=info.default_input[0],
                       image_size=info.min_size, model_args=model_args,
                       labels=[f"class{i}" for i in range(NUM_CLASSES)])


def graph_dims(value_info) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_version_folder(folder, task, card: ModelCard) -> onnx.ModelProto:
    """The layout, a single self-contained file, opset, dynamic batch, and the card inside."""
    assert {p.name for p in folder.iterdir()} == {MODEL_FILE, CARD_FILE}
    model = onnx.load(folder / MODEL_FILE, load_external_data=False)
    external = [t.name for t in model.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    assert not external, f"weights stored outside the file: {external[:3]}"
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    (inp,) = model.graph.input
    h = task.hparams
    in_dims = graph_dims(inp)
    assert isinstance(in_dims[0], str) and in_dims[0], f"batch axis is fixed: {in_dims}"
    assert in_dims[1:] == [h.in_channels, h.image_size, h.image_size]
    assert [o.name for o in model.graph.output] == [o.name for o in card.outputs]
    assert isinstance(graph_dims(model.graph.output[0])[0], str)
    embedded = {p.key: p.value for p in model.metadata_props}[ONNX_METADATA_KEY]
    written = json.loads((folder / CARD_FILE).read_text())
    assert json.loads(embedded) == written
    assert ModelCard.model_validate(written) == card
    return model


# --- every architecture, both tasks ---------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("task_name", ["classify", "localize"])
@pytest.mark.parametrize("model", list_models())
def test_every_model_exports_and_matches_torch(model, task_name, tmp_path):
    task = build(task_name, model)
    exported = export_task(task, batch_sizes=(1, 3, 8))
    assert exported.max_abs_diff <= 1e-4
    assert exported.batch_sizes == (1, 3, 8)
    card = task.model_card(opset=18, metrics={"onnx_max_abs_diff": exported.max_abs_diff})
    folder, card = write_version(exported.model, card, tmp_path)
    assert folder == tmp_path / card.name / "1" and card.version == "1"
    check_version_folder(folder, task, card)

    # The file on disk (not only the bytes checked above) runs at yet another batch size.
    h = task.hparams
    x = torch.randn(5, h.in_channels, h.image_size, h.image_size)
    with torch.inference_mode():
        expected = task.net.eval()(x).numpy()
    (got,) = ort_session(folder / MODEL_FILE).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_googlenet_is_exported_without_its_auxiliary_heads():
    task = build("classify", "googlenet", aux_logits=True)
    task.train()  # as a task leaves training; export must switch to eval itself
    exported = export_task(task)
    assert [o.name for o in exported.model.graph.output] == ["logits"]
    assert exported.max_abs_diff <= 1e-4
    onnx_weights = sum(int(np.prod(t.dims)) for t in exported.model.graph.initializer)
    aux = sum(p.numel() for n, p in task.net.named_parameters() if n.startswith("aux"))
    assert aux > 1_000_000 and onnx_weights < sum(p.numel() for p in task.net.parameters()) - aux


class StubSession:
    """Answers like an ORT session with fixed outputs."""

    def __init__(self, outputs: np.ndarray):
        self.outputs = outputs

    def get_inputs(self):
        return [SimpleNamespace(name="input")]

    def run(self, _, feeds):
        return [self.outputs[: len(feeds["input"])]]


def test_evaluate_scores_localization_like_the_task():
    # (B, 5 + 2): [p_c, x, y, w, h, p_1, p_2]; targets alike, the last image is empty
    out = np.array([[0.9, 0.1, 0.1, 0.5, 0.5, 0.8, 0.2],
                    [0.7, 0.0, 0.0, 0.5, 0.5, 0.3, 0.7],
                    [0.6, 0.0, 0.0, 0.1, 0.1, 0.5, 0.5]], dtype=np.float32)
    target = torch.tensor([[1, 0.1, 0.1, 0.5, 0.5, 1, 0],
                           [1, 0.25, 0.0, 0.5, 0.5, 1, 0],
                           [0, 0, 0, 0, 0, 0, 0]])
    metrics = precision.evaluate(StubSession(out), [(np.zeros((3, 1, 4, 4), np.float32),
                                                     target)], "localize")
    assert metrics["val_obj_acc"] == pytest.approx(2 / 3)  # the empty one is called an object
    assert metrics["val_cls_acc"] == pytest.approx(1 / 2)  # of the two objects
    assert metrics["val_iou"] == pytest.approx((1.0 + 1 / 3) / 2)  # half-overlapping boxes: 1/3
    classify = precision.evaluate(StubSession(out[:, 5:]), [(np.zeros((3, 1, 4, 4), np.float32),
                                                            torch.tensor([0, 0, 1]))], "classify")
    assert classify == {"val_acc": pytest.approx(1 / 3)}  # argmax of a tie is the first class


def test_next_version_counts_integer_folders_only(tmp_path):
    for name in ["1", "2", "7", "latest", ".incoming-x"]:
        (tmp_path / name).mkdir()
    assert export.next_version(tmp_path) == 8
    assert export.next_version(tmp_path / "missing") == 1


# --- parity failure: a real exporter mistake --------------------------------------------------
class BatchDependent(nn.Module):
    """Python control flow on the batch size: tracing at batch 2 freezes the other branch, so
    the ONNX file is wrong at batch 1. The classic way a traced export goes silently wrong."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y + 1.0 if x.shape[0] == 1 else y


def test_parity_failure_names_the_figure():
    task = build("classify", "cnn")
    task.net = BatchDependent(task.net)
    with pytest.raises(WaldoError) as info:
        export_task(task, batch_sizes=(1, 3, 8))
    message = str(info.value)
    assert "parity check failed" in message and "= 1 " in message and "0.0001" in message
    assert "\n" not in message
    # The same network passes where tracing and torch agree (batch sizes other than 1).
    assert export_task(task, batch_sizes=(3, 8)).max_abs_diff <= 1e-4


def test_parity_tolerance_is_applied():
    task = build("classify", "cnn")
    task.net = BatchDependent(task.net)
    assert export_task(task, atol=2.0).max_abs_diff == pytest.approx(1.0)


# --- a trained run in a local store: the CLI and export_run ------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """cnn and lenet5 trained on digits for 10 epochs each, tracked in ./mlflow.db."""
    work = tmp_path_factory.mktemp("export-runs")
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        results = {m: train(TrainSpec(model=m, epochs=10, progress_bar=False))
                   for m in ["cnn", "lenet5"]}
    finally:
        mp.undo()
    return work, results


@pytest.fixture
def at_runs(runs, monkeypatch):
    work, results = runs
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return work, results


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["export", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("waldo export: error:")]
    assert len(lines) == 1, err
    return lines[0]


def registered(tracking_uri: str) -> list[str]:
    return [m.name for m in MlflowClient(tracking_uri).search_registered_models()]


@pytest.mark.slow
def test_export_a_run_into_the_repository(at_runs, capsys, tmp_path):
    work, results = at_runs
    run = results["cnn"]
    out = tmp_path / "models"
    code, stdout, err = run_cli(capsys, "--run", run.run_id, "--output", str(out))
    assert code == 0, err
    folder = out / "cnn" / "1"
    card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
    task = load_task_file(run.best_checkpoint)
    check_version_folder(folder, task, card)
    assert card.source_run == run.run_id and card.version == "1" and card.opset == 18
    assert card.precision == "fp32" and card.labels == [str(d) for d in range(10)]
    assert card.metrics["test_acc"] == pytest.approx(run.metrics["test_acc"])
    assert 0 <= card.metrics["onnx_max_abs_diff"] <= 1e-4
    assert "exported cnn version 1" in stdout and str(folder / MODEL_FILE) in stdout

    code, stdout, err = run_cli(capsys, "--run", run.run_id, "--output", str(out))
    assert code == 0 and (out / "cnn" / "2" / MODEL_FILE).is_file(), err
    assert json.loads((out / "cnn" / "2" / CARD_FILE).read_text())["version"] == "2"
    assert not registered(run.tracking_uri)  # no --register, nothing in the registry


@pytest.mark.slow
def test_export_a_checkpoint_with_dynamo_name_and_opset(at_runs, capsys, tmp_path):
    _, results = at_runs
    code, stdout, err = run_cli(capsys, "--checkpoint", str(results["lenet5"].best_checkpoint),
                                "--name", "digits-lenet", "--opset", "20", "--exporter",
                                "dynamo", "--output", str(tmp_path))
    assert code == 0, err
    model = onnx.load(tmp_path / "digits-lenet" / "1" / MODEL_FILE)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {20}
    card = json.loads((tmp_path / "digits-lenet" / "1" / CARD_FILE).read_text())
    assert card["name"] == "digits-lenet" and card["source_run"] is None
    assert "dynamo exporter" in stdout


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn", "lenet5"])
def test_int8_loses_at_most_one_point_on_digits(at_runs, model, tmp_path):
    _, results = at_runs
    result = export_run(results[model].run_id, precision="int8", output=tmp_path)
    metrics = result.card.metrics
    drop = metrics["val_acc_fp32"] - metrics["val_acc"]
    print(f"\n{model} int8: val_acc {metrics['val_acc']:.4f}, fp32 {metrics['val_acc_fp32']:.4f}"
          f", drop {100 * drop:+.2f} points")
    assert metrics["val_acc_fp32"] > 0.9  # trained for real
    assert drop <= 0.01
    assert result.card.precision == "int8"
    model_proto = onnx.load(result.model_path)
    assert "QuantizeLinear" in {n.op_type for n in model_proto.graph.node}
    inputs = [i.type.tensor_type.elem_type for i in model_proto.graph.input]
    assert inputs == [onnx.TensorProto.FLOAT]


@pytest.mark.slow
def test_fp16_halves_the_file_and_keeps_accuracy(at_runs, tmp_path):
    _, results = at_runs
    fp32 = export_run(results["lenet5"].run_id, output=tmp_path)
    fp16 = export_run(results["lenet5"].run_id, precision="fp16", output=tmp_path)
    assert fp16.version == fp32.version + 1
    assert fp16.model_path.stat().st_size < 0.6 * fp32.model_path.stat().st_size
    assert fp16.card.metrics["val_acc_fp32"] - fp16.card.metrics["val_acc"] <= 0.01


@pytest.mark.slow
def test_a_reduced_model_that_loses_accuracy_is_refused(at_runs, tmp_path, monkeypatch):
    _, results = at_runs
    real = precision.reduce_precision

    def broken(model, precision, calibration=()):
        reduced = real(model, "fp16")
        for tensor in reduced.graph.initializer:  # scramble the weights: accuracy collapses
            if len(tensor.dims) > 1:
                values = numpy_helper.to_array(tensor)
                tensor.CopyFrom(numpy_helper.from_array(values[..., ::-1].copy(), tensor.name))
        return reduced

    monkeypatch.setattr(precision, "reduce_precision", broken)
    with pytest.raises(WaldoError, match=r"fp16 loses [\d.]+ points of val_acc"):
        export_run(results["cnn"].run_id, precision="fp16", output=tmp_path, register=True)
    assert not list(tmp_path.rglob(MODEL_FILE))
    assert not registered(results["cnn"].tracking_uri)


@pytest.mark.slow
def test_register_locally_and_roll_back_on_a_version_clash(at_runs, capsys, tmp_path):
    _, results = at_runs
    run = results["lenet5"]
    uri = run.tracking_uri
    out = tmp_path / "models"
    code, stdout, err = run_cli(capsys, "--run", run.run_id, "--output", str(out), "--register",
                                "--alias", "production")
    assert code == 0, err
    client = MlflowClient(uri)
    mv = client.get_model_version_by_alias("lenet5", "production")
    assert (str(mv.version), mv.run_id) == ("1", run.run_id)
    assert "registered models:/lenet5/1, alias 'production' -> version 1" in stdout

    # A folder from an export without --register holds the number MLflow hands out next.
    (out / "lenet5" / "2").mkdir()
    (out / "lenet5" / "2" / MODEL_FILE).write_bytes(b"not this one")
    code, _, err = run_cli(capsys, "--run", run.run_id, "--output", str(out), "--alias",
                           "production")
    assert code == 2 and "already exists" in error_line(err)
    versions = client.search_model_versions("name='lenet5'")
    assert [str(v.version) for v in versions] == ["1"]  # the new version was taken back
    assert str(client.get_model_version_by_alias("lenet5", "production").version) == "1"
    assert (out / "lenet5" / "2" / MODEL_FILE).read_bytes() == b"not this one"
    client.delete_registered_model("lenet5")  # leave the store as the other tests expect


# --- user errors: exit 2, one line, nothing written or registered --------------------------
@pytest.mark.slow
def test_a_run_without_checkpoint(at_runs, capsys, tmp_path):
    _, results = at_runs
    uri = results["cnn"].tracking_uri
    client = MlflowClient(uri)
    empty = client.create_run(client.get_experiment_by_name("waldo").experiment_id).info.run_id
    client.set_terminated(empty)
    code, _, err = run_cli(capsys, "--run", empty, "--register", "--alias", "production",
                           "--output", str(tmp_path))
    line = error_line(err)
    assert code == 2 and empty in line and "no checkpoint" in line
    assert not registered(uri) and not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("argv, expected", [
    (["--run", "0123456789abcdef0123456789abcdef"], ["unknown run", "0123456789abcdef"]),
    (["--run", "{cnn}", "--alias", "latest"], ["'latest'", "reserved"]),
    (["--run", "{cnn}", "--alias", "v2", "--register"], ["'v2'", "reserved"]),
    (["--run", "{cnn}", "--name", "../escape"], ["invalid model name", "'../escape'"]),
    (["--run", "{cnn}", "--opset", "17"], ["opset 17", "18 to 23"]),
    (["--checkpoint", "missing.ckpt"], ["'missing.ckpt'", "does not exist"]),
])
def test_user_errors_exit_2_with_one_line(at_runs, capsys, tmp_path, argv, expected):
    _, results = at_runs
    argv = [a.replace("{cnn}", results["cnn"].run_id) for a in argv]
    code, _, err = run_cli(capsys, *argv, "--output", str(tmp_path))
    line = error_line(err)
    assert code == 2
    for text in expected:
        assert text in line, line
    assert not any(tmp_path.iterdir()) and not registered(results["cnn"].tracking_uri)


def test_run_and_checkpoint_are_exclusive(capsys):
    with pytest.raises(SystemExit) as info:
        main(["export", "--run", "x", "--checkpoint", "y"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow
def test_parity_failure_through_the_cli_writes_and_registers_nothing(at_runs, capsys, tmp_path,
                                                                     monkeypatch):
    _, results = at_runs
    run = results["cnn"]

    def load_batch_dependent(path):
        task = load_task_file(path)
        task.net = BatchDependent(task.net)
        return task

    monkeypatch.setattr(export, "load_task_file", load_batch_dependent)
    code, stdout, err = run_cli(capsys, "--run", run.run_id, "--register", "--alias",
                                "production", "--output", str(tmp_path))
    line = error_line(err)
    assert code == 2 and "parity check failed" in line and "= 1 " in line
    assert not any(tmp_path.iterdir()) and not registered(run.tracking_uri)
    assert stdout == ""
