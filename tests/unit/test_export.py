"""ONNX export without training: every registered network for both tasks passes parity with
torch; the ModelCard built from a checkpoint's record; the file and the repository layout; the
fp16/int8 scoring; a bare checkpoint through `waldo export`; and the user errors that must
exit 2 with one line. Exports of trained runs, precision against fp32 and the registry are in
tests/integration/test_export_runs.py.

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
import pytorch_lightning as pl
import torch
from support import error_line
from support.tasks import BatchDependent

import training.export.precision as precision
from serving.modelcard import (
    CARD_FILE,
    LOCALIZE_OUTPUTS,
    MODEL_FILE,
    ONNX_METADATA_KEY,
    ModelCard,
)
from training.errors import WaldoError
from training.export import ExportResult, export_run
from training.export.card import build_card, default_name, output_names
from training.export.layout import next_version, write_version
from training.export.parity import export_checked, ort_session
from training.export.source import CheckpointRecord, read_record
from training.models import get_model_info, list_models
from training.spec import ExportSpec
from training.tasks import TASKS, BaseTask
from waldo.cli import build_parser, main

warnings.filterwarnings("ignore", ".*does not have many workers.*")

NUM_CLASSES = 3
LABELS = [f"class{i}" for i in range(NUM_CLASSES)]


def build(task: str, model: str, **model_args) -> BaseTask:
    """A randomly initialized task at the model's smallest input size."""
    info = get_model_info(model)
    torch.manual_seed(0)
    return TASKS[task](model_name=model, num_classes=NUM_CLASSES, in_channels=info.default_input[0],
                       image_size=info.min_size, model_args=model_args, labels=LABELS)


def record_of(task: BaseTask) -> CheckpointRecord:
    return CheckpointRecord(task=task.task, hparams=dict(task.hparams))


def save_checkpoint(task: BaseTask, path, **entries) -> None:
    """A checkpoint as `waldo train` leaves one (weights, hyperparameters, task, data state),
    without training."""
    h = task.hparams
    data = {"name": "digits", "labels": list(h.labels), "mean": [0.5] * h.in_channels,
            "std": [0.25] * h.in_channels, "in_channels": h.in_channels,
            "image_size": h.image_size}
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(h),
                "pytorch-lightning_version": pl.__version__, "waldo_task": task.task,
                "DigitsDataModule": data, **entries}, path)


def graph_dims(value_info) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_version_folder(folder, task: BaseTask, card: ModelCard) -> onnx.ModelProto:
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
    extra = list(card.explain.shapes()) if card.explain is not None else []
    assert [o.name for o in model.graph.output] == [o.name for o in card.outputs] + extra
    assert isinstance(graph_dims(model.graph.output[0])[0], str)
    embedded = {p.key: p.value for p in model.metadata_props}[ONNX_METADATA_KEY]
    written = json.loads((folder / CARD_FILE).read_text())
    assert json.loads(embedded) == written
    assert ModelCard.model_validate(written) == card
    assert model.model_version == int(card.version)
    return model


# --- the card: made once, from the checkpoint's record -------------------------------------
def test_card_is_built_from_the_checkpoint_record(tmp_path):
    task = build("localize", "cnn")
    path = tmp_path / "best.ckpt"
    monitor = "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}"
    save_checkpoint(task, path, callbacks={monitor: {
        "monitor": "val_loss", "best_model_score": torch.tensor(0.25)}})
    record = read_record(path)
    size = task.hparams.image_size  # the cnn's smallest input
    assert record.task == "localize" and record.input_shape == (1, size, size)
    assert record.data["name"] == "digits" and record.best_metric() == {"val_loss": 0.25}

    card = build_card(record, version=3, source_run="abc", metrics={"test_acc": 0.9},
                      opset=20, precision="int8")
    assert (card.name, card.version, card.architecture) == ("cnn-localize", "3", "cnn")
    assert card.task == "localize" and card.labels == LABELS
    assert (card.input.channels, card.input.height, card.input.width) == (1, size, size)
    # The task was built without normalization: the data module's saved state supplies it.
    assert card.input.mean == [0.5] and card.input.std == [0.25]
    assert card.outputs == LOCALIZE_OUTPUTS and output_names("localize") == ["y"]
    assert (card.source_run, card.metrics, card.opset, card.precision) == (
        "abc", {"test_acc": 0.9}, 20, "int8")
    assert build_card(record, name="digits-box").name == "digits-box"


def test_card_takes_what_the_task_lacks_from_the_data_state():
    hparams = {"model_name": "lenet5", "num_classes": 2, "in_channels": 3, "image_size": 32}
    data = {"name": "folder", "labels": ["cat", "dog"], "mean": [0.4, 0.5, 0.6],
            "std": [0.2, 0.2, 0.2], "image_size": 32}
    card = build_card(CheckpointRecord("classify", hparams, data))
    assert card.name == "lenet5" and card.version == "1" and card.labels == ["cat", "dog"]
    assert card.input.mean == [0.4, 0.5, 0.6] and card.input.std == [0.2, 0.2, 0.2]
    assert [o.name for o in card.outputs] == ["logits"]
    bare = build_card(CheckpointRecord("classify", hparams))
    assert bare.labels == ["0", "1"] and bare.input.mean == [0.0] * 3


def test_card_of_an_unknown_task_names_the_known_ones():
    record = CheckpointRecord("segment", {"model_name": "cnn", "num_classes": 2,
                                          "in_channels": 1, "image_size": 28})
    with pytest.raises(WaldoError, match=r"unknown task 'segment'.*classify, localize"):
        build_card(record)


# --- every architecture, both tasks ---------------------------------------------------------
# VGG-16 and VGG-19 differ from VGG-11 only in their conv stacks, which their localizers
# export; their 102M-parameter classifier is VGG-11's, exported once (about 9 s each on 2 cores).
SAME_CLASSIFIER_AS_VGG11 = {("vgg16", "classify"), ("vgg19", "classify")}


@pytest.mark.slow
@pytest.mark.parametrize("model,task_name", [
    (model, task) for model in list_models() for task in ("classify", "localize")
    if (model, task) not in SAME_CLASSIFIER_AS_VGG11])
def test_every_model_exports_and_matches_torch(model, task_name, tmp_path):
    task = build(task_name, model)
    record = record_of(task)
    exported = export_checked(task.net, record.input_shape, output_names=output_names(task_name),
                              batch_sizes=(1, 3, 8))
    assert exported.max_abs_diff <= 1e-4
    assert exported.batch_sizes == (1, 3, 8)
    name = default_name(record)
    folder, card = write_version(
        exported.model, lambda v: build_card(record, version=v, opset=18, metrics={
            "onnx_max_abs_diff": exported.max_abs_diff}), output=tmp_path, name=name)
    assert folder == tmp_path / name / "1" and card.version == "1"
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
    exported = export_checked(task.net, record_of(task).input_shape,
                              output_names=output_names("classify"))
    assert [o.name for o in exported.model.graph.output] == ["logits"]
    assert exported.max_abs_diff <= 1e-4
    onnx_weights = sum(int(np.prod(t.dims)) for t in exported.model.graph.initializer)
    aux = sum(p.numel() for n, p in task.net.named_parameters() if n.startswith("aux"))
    assert aux > 1_000_000 and onnx_weights < sum(p.numel() for p in task.net.parameters()) - aux


# --- the repository layout --------------------------------------------------------------------
def test_next_version_counts_integer_folders_only(tmp_path):
    for name in ["1", "2", "7", "latest", ".incoming-x"]:
        (tmp_path / name).mkdir()
    assert next_version(tmp_path) == 8
    assert next_version(tmp_path / "missing") == 1


def test_write_version_numbers_the_card_and_never_replaces_a_version(tmp_path):
    task = build("classify", "cnn")
    record = record_of(task)
    exported = export_checked(task.net, record.input_shape, output_names=output_names("classify"))
    made = []

    def card_for(version: int) -> ModelCard:
        made.append(version)
        return build_card(record, version=version, opset=18)

    first, card1 = write_version(exported.model, card_for, output=tmp_path, name="cnn")
    second, card2 = write_version(exported.model, card_for, output=tmp_path, name="cnn")
    assert (first.name, card1.version, second.name, card2.version) == ("1", "1", "2", "2")
    check_version_folder(second, task, card2)
    assert made == [1, 2]
    with pytest.raises(WaldoError, match="already exists"):
        write_version(exported.model, card_for, output=tmp_path, name="cnn", version=2)
    assert sorted(p.name for p in (tmp_path / "cnn").iterdir()) == ["1", "2"]  # nothing left over
    assert json.loads((second / CARD_FILE).read_text())["version"] == "2"


# --- fp16/int8 scoring ------------------------------------------------------------------------
class StubSession:
    """Answers like an ORT session with fixed outputs."""

    def __init__(self, outputs: np.ndarray):
        self.outputs = outputs

    def get_inputs(self):
        return [SimpleNamespace(name="input")]

    def get_outputs(self):
        return [SimpleNamespace(name="output")]

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


def test_data_to_score_on_comes_from_the_checkpoint_record(tmp_path):
    record = CheckpointRecord("classify", {"model_name": "cnn"},
                              {"name": "digits", "labels": ["0"], "image_size": 8})
    spec = precision.spec_from_record(record, tmp_path / "x.ckpt")
    assert (spec.data, spec.image_size, spec.task) == ("digits", 8, "classify")
    with pytest.raises(WaldoError, match="does not say which data"):
        precision.spec_from_record(CheckpointRecord("classify", {}), tmp_path / "x.ckpt")


# --- parity failure: a real exporter mistake --------------------------------------------------
def test_parity_failure_names_the_figure():
    net = BatchDependent(build("classify", "cnn").net)
    with pytest.raises(WaldoError) as info:
        export_checked(net, (1, 14, 14), output_names=["logits"], batch_sizes=(1, 3, 8))
    message = str(info.value)
    assert "parity check failed" in message and "= 1 " in message and "0.0001" in message
    assert "\n" not in message
    # The same network passes where tracing and torch agree (batch sizes other than 1).
    assert export_checked(net, (1, 14, 14), output_names=["logits"],
                          batch_sizes=(3, 8)).max_abs_diff <= 1e-4


def test_parity_tolerance_is_applied():
    net = BatchDependent(build("classify", "cnn").net)
    exported = export_checked(net, (1, 14, 14), output_names=["logits"], atol=2.0)
    assert exported.max_abs_diff == pytest.approx(1.0)


# --- a bare checkpoint through export_run and the CLI ---------------------------------------
def test_export_a_checkpoint_file(tmp_path, capsys):
    task = build("classify", "cnn")
    path = tmp_path / "best.ckpt"
    save_checkpoint(task, path)
    out = tmp_path / "models"
    code = main(["export", "--checkpoint", str(path), "--output", str(out), "--name", "digits"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    folder = out / "digits" / "1"
    card = ModelCard.model_validate_json((folder / CARD_FILE).read_text())
    check_version_folder(folder, task, card)
    assert card.source_run is None and card.labels == LABELS and card.opset == 18
    assert card.input.mean == [0.5] and 0 <= card.metrics["onnx_max_abs_diff"] <= 1e-4
    assert stdout.startswith(f"exported digits version 1: {folder / MODEL_FILE}")
    assert "parity: max |onnxruntime - torch|" in stdout

    result = export_run(ExportSpec(checkpoint=str(path), output=str(out), name="digits"))
    assert isinstance(result, ExportResult) and result.version == 2
    assert result.path == folder.parent / "2" and result.card.version == "2"
    assert result.checkpoint == path and result.model_uri is None and result.reference == {}


def test_export_flags_are_the_spec_fields(capsys):
    parser = build_parser()
    for argv in (["export"], ["jobs", "submit", "export"]):
        args = parser.parse_args([*argv, "--run", "r", "--register", "--opset", "20"])
        assert (args.run, args.publish, args.opset) == ("r", True, 20)
        args = parser.parse_args([*argv, "--checkpoint", "c", "--publish", "--precision", "int8"])
        assert (args.checkpoint, args.publish, args.precision) == ("c", True, "int8")
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--help"])
    help_text = capsys.readouterr().out
    for field in ExportSpec.model_fields:
        assert "--" + field.replace("_", "-") in help_text
    assert "--register" in help_text and "one of fp32, fp16, int8" in help_text


# --- user errors: exit 2, one line, nothing written -----------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["--run", "r", "--alias", "latest"], ["'latest'", "reserved"]),
    (["--run", "r", "--alias", "v2", "--register"], ["'v2'", "reserved"]),
    (["--run", "r", "--name", "../escape"], ["invalid model name", "'../escape'"]),
    (["--run", "r", "--opset", "17"], ["opset 17", "18 to 23"]),
    (["--run", "r", "--precision", "int4"], ["'precision'", "'int4'", "fp16"]),
    (["--run", "r", "--atol", "-1"], ["'atol'", "-1"]),
    (["--checkpoint", "missing.ckpt"], ["'missing.ckpt'", "does not exist"]),
    (["--run", "r", "--checkpoint", "c"], ["exactly one of run", "checkpoint"]),
    ([], ["exactly one of run", "checkpoint"]),
])
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, argv, expected):
    code = main(["export", *argv, "--output", str(tmp_path)])
    line = error_line(capsys.readouterr().err, "export")
    assert code == 2
    for text in expected:
        assert text in line, line
    assert not any(tmp_path.iterdir())


def test_a_file_that_is_no_checkpoint(capsys, tmp_path):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("not a checkpoint")
    code = main(["export", "--checkpoint", str(bogus), "--output", str(tmp_path / "models")])
    line = error_line(capsys.readouterr().err, "export")
    assert code == 2 and "is not a Waldo checkpoint" in line
    assert not (tmp_path / "models").exists()
