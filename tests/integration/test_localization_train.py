"""Localization end to end: train on a real MLflow server, read the run back, then
`waldo predict` (a real subprocess) on PNGs, for a localizer and a classifier."""

from __future__ import annotations

import json
import re

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from support import TrainedRun, artifact_paths, user_error_line, waldo_main

from training.data import create_datamodule
from training.tasks import ClassificationTask, LocalizationTask, load_task

EPOCH_METRICS = ["train_loss", "val_loss", "val_obj_acc", "val_cls_acc", "val_iou", "val_iou50"]
TEST_METRICS = ["test_loss", "test_obj_acc", "test_cls_acc", "test_iou", "test_iou50"]
CANVAS = 64


@pytest.fixture(scope="module")
def loc_run(trained_run, mlflow_server) -> TrainedRun:
    """`waldo train --task localize --model cnn --data localization-digits --epochs 2
    --data-arg train_size=256 --data-arg eval_size=64`, in-process."""
    return trained_run(task="localize", model="cnn", data="localization-digits", epochs=2,
                       data_args={"train_size": 256, "eval_size": 64}, tracking_uri=mlflow_server,
                       experiment="it-localize")


@pytest.fixture(scope="module")
def cls_run(tracked_cnn) -> TrainedRun:
    """The classifier `waldo predict` runs: the session's cnn on the tracking server."""
    return tracked_cnn


@pytest.fixture(scope="module")
def pngs(loc_run, cls_run, tmp_path_factory):
    """Test canvases (the first 3 with a digit and the first empty one) and 2 test digits as
    PNG files, with the images they hold."""
    folder = tmp_path_factory.mktemp("pngs")
    loc_spec, cls_spec = loc_run.spec, cls_run.spec
    out = {}
    for kind, spec in [("loc", loc_spec), ("cls", cls_spec)]:
        dm = create_datamodule(spec.data_spec())
        dm.setup("fit")
        items = [dm.test_set[i] for i in range(len(dm.test_set))]
        if kind == "loc":
            full = [i for i, (_, t) in enumerate(items) if t[0] == 1][:3]
            empty = [i for i, (_, t) in enumerate(items) if t[0] == 0][:1]
            chosen = full + empty
        else:
            chosen = [0, 1]
        files, images = [], []
        for i in chosen:
            image = items[i][0]
            path = folder / f"{kind}_{i}.png"
            Image.fromarray(image[0].numpy()).save(path)
            files.append(str(path))
            images.append(image)
        out[kind] = (files, torch.stack(images), dm)
    (folder / "not_an_image.png").write_text("hello, I am text\n")
    return folder, out


@pytest.fixture(scope="module")
def cli_runs(loc_run, cls_run, pngs, waldo):
    """The `waldo predict` subprocesses, started together (each pays the torch import)."""
    folder, images = pngs
    cases = {
        "loc": ["predict", "--checkpoint", str(loc_run.checkpoint), *images["loc"][0]],
        "cls": ["predict", "--checkpoint", str(cls_run.checkpoint), *images["cls"][0]],
        "missing-checkpoint": ["predict", "--checkpoint", str(folder / "nope.ckpt"),
                               images["loc"][0][0]],
    }
    return waldo.run_all(cases, cwd=folder)


# --- the run on the server ------------------------------------------------------------------
def test_localization_run_logs_epoch_and_test_metrics(mlflow_server, loc_run):
    result = loc_run.result
    client = MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["waldo.task"] == "localize"
    assert run.data.params["data_args.train_size"] == "256"
    for key in EPOCH_METRICS:
        history = client.get_metric_history(result.run_id, key)
        assert len(history) == 2, f"{key}: {[(m.step, m.value) for m in history]}"
        assert history[0].step < history[1].step
        if not key.endswith("loss"):
            assert all(0 <= m.value <= 1 for m in history), key
    for key in TEST_METRICS:
        history = client.get_metric_history(result.run_id, key)
        assert len(history) == 1, key
        assert history[0].value == pytest.approx(result.metrics[key])
    # it learned something: an untrained head's boxes overlap the digits with IoU about 0.15
    assert result.metrics["test_iou"] > 0.3


def test_localization_run_logs_box_pictures(mlflow_server, loc_run, tmp_path):
    result = loc_run.result
    client = MlflowClient(mlflow_server)
    paths = artifact_paths(client, result.run_id)
    boxes = sorted(p for p in paths if p.startswith("boxes/"))
    assert boxes == ["boxes/epoch_000.png", "boxes/epoch_001.png"], paths
    assert "learning_curves.png" in paths and "spec.yaml" in paths
    for name in boxes:
        local = client.download_artifacts(result.run_id, name, str(tmp_path))
        with Image.open(local) as image:
            # 16 canvases of 64 px drawn at scale 2, 4 a row, 2 px padding: 4 * (128 + 2) + 2
            assert image.format == "PNG" and image.size == (522, 522)


def test_best_localization_checkpoint_loads_as_a_localizer(loc_run):
    from training.export.card import build_card
    from training.export.source import read_record

    assert isinstance(load_task(str(loc_run.checkpoint)), LocalizationTask)
    card = build_card(read_record(loc_run.checkpoint))  # what an export would write
    assert card.task == "localize" and card.labels == [str(d) for d in range(10)]
    assert (card.input.height, card.input.width) == (CANVAS, CANVAS)


# --- waldo predict --------------------------------------------------------------------------
LOC_LINE = re.compile(
    r"^(?P<image>.+): (?P<found>object|no object) \(p_c=(?P<p_c>[\d.]+)\), class (?P<label>\d) "
    r"\((?P<prob>[\d.]+)\), box x=(?P<x>[\d.]+) y=(?P<y>[\d.]+) w=(?P<w>[\d.]+) h=(?P<h>[\d.]+) px$"
)


def test_predict_localizer_prints_p_c_and_a_box_in_pixels(loc_run, pngs, cli_runs):
    returncode, stdout, stderr = cli_runs["loc"]
    assert returncode == 0, stderr
    files, images, dm = pngs[1]["loc"]
    lines = stdout.strip().splitlines()
    assert len(lines) == len(files), stdout
    # what the trained network says about the same canvases through the training pipeline
    task = load_task(str(loc_run.checkpoint)).eval()
    with torch.no_grad():
        y = task(dm.batch_transform()(images))
    for line, name, expected in zip(lines, files, y, strict=True):
        match = LOC_LINE.match(line)
        assert match, line
        assert match["image"] == name
        p_c = float(match["p_c"])
        assert p_c == pytest.approx(expected[0].item(), abs=1.5e-3)
        assert (match["found"] == "object") == (expected[0].item() >= 0.5)
        box = [float(match[k]) for k in "xywh"]
        assert all(0 <= v <= CANVAS for v in box), box
        assert box == pytest.approx((expected[1:5].clamp(0, 1) * CANVAS).tolist(), abs=0.1)
        assert match["label"] == str(int(expected[5:].argmax()))


def test_predict_classifier_prints_label_and_probability(cls_run, pngs, cli_runs):
    returncode, stdout, stderr = cli_runs["cls"]
    assert returncode == 0, stderr
    files, images, dm = pngs[1]["cls"]
    task = load_task(str(cls_run.checkpoint)).eval()
    assert isinstance(task, ClassificationTask)
    with torch.no_grad():
        probs = task(dm.batch_transform()(images)).softmax(1)
    lines = stdout.strip().splitlines()
    assert len(lines) == len(files), stdout
    for line, name, p in zip(lines, files, probs, strict=True):
        match = re.fullmatch(r"(.+): (\d) \(([\d.]+)\)", line)
        assert match, line
        assert match[1] == name
        assert match[2] == str(int(p.argmax()))
        assert float(match[3]) == pytest.approx(p.max().item(), abs=1.5e-3)


def test_predict_missing_checkpoint_subprocess(cli_runs):
    returncode, stdout, stderr = cli_runs["missing-checkpoint"]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert returncode == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("waldo predict: error:") and "nope.ckpt" in lines[0]


@pytest.mark.parametrize("case", ["missing-image", "not-an-image", "directory-as-image",
                                  "text-as-checkpoint", "png-as-checkpoint"])
def test_predict_user_errors_in_process(loc_run, pngs, capsys, case):
    """The same through `waldo.cli.main` (cheaper than a subprocess): status 2, one stderr line.
    A file that is not a checkpoint at all must be a user error too, not a traceback."""
    folder, images = pngs
    best = str(loc_run.checkpoint)
    png = images["loc"][0][0]
    (folder / "notes.ckpt").write_text("not a checkpoint\n")
    argv, expected = {
        "missing-image": ([best, png, str(folder / "nope.png")], "nope.png"),
        "not-an-image": ([best, str(folder / "not_an_image.png")], "not_an_image.png"),
        "directory-as-image": ([best, str(folder)], str(folder)),
        "text-as-checkpoint": ([str(folder / "notes.ckpt"), png], "notes.ckpt"),
        "png-as-checkpoint": ([png, png], png),
    }[case]
    status, out, err = waldo_main(capsys, "predict", "--checkpoint", *argv)
    line = user_error_line(status, err)
    assert line.startswith("waldo predict: error:") and expected in line
    assert out == ""


def test_predict_json_matches_the_printed_lines(loc_run, pngs, capsys):
    files = pngs[1]["loc"][0]
    status, out, err = waldo_main(capsys, "predict", "--json", "--checkpoint",
                                  str(loc_run.checkpoint), *files)
    assert status == 0, err
    results = json.loads(out)
    assert [r["image"] for r in results] == files
    for r in results:
        assert set(r) == {"image", "p_c", "object", "label", "probability", "box"}
        assert set(r["box"]) == {"x", "y", "w", "h"}
        assert r["object"] == (r["p_c"] >= 0.5)
