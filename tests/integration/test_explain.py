"""What a network looks at: the pictures every run logs, and `waldo explain` for a user's images,
on the suite's small classifier on the tracking server (`tracked_cnn`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from support import artifact_paths, user_error_line, waldo_main

PICTURES = ["first_layer_filters.png", "confusion_matrix.png", "pictures/gradcam_correct.png",
            "pictures/gradcam_wrong.png", "pictures/worst_mistakes.png",
            *(f"pictures/feature_maps/test_{i:03d}.png" for i in range(3))]


def test_a_run_logs_pictures_a_person_can_read(tracked_cnn, mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    paths = artifact_paths(client, tracked_cnn.run_id)
    assert set(PICTURES) <= set(paths), sorted(paths)
    local = {}
    for name in PICTURES:
        local[name] = client.download_artifacts(tracked_cnn.run_id, name, str(tmp_path))
        with Image.open(local[name]) as image:
            pixels = np.asarray(image.convert("RGB"))
        assert min(image.size) >= 100, (name, image.size)
        assert pixels.std() > 10, f"{name} is (nearly) one colour"
    with Image.open(local["first_layer_filters.png"]) as filters:
        assert filters.width >= 200  # 8 filters of 5x5, each upscaled, with a title and numbers
    with Image.open(local["pictures/feature_maps/test_000.png"]) as sheet:
        assert sheet.height > 300  # the input and a block per conv stage (two for the cnn)


def _digit_files(digits, folder: Path, count: int) -> list[str]:
    files = []
    for n, (label, png) in enumerate(digits[:count]):
        path = folder / f"digit{n:02d}_{label}.png"
        path.write_bytes(png)
        files.append(str(path))
    return files


def test_class_maps_peak_on_the_strokes(tracked_cnn, digits):
    """For each held-out digit, the map for the network's answer is not uniform, and over the 20
    digits it is brighter on the strokes than on the background: the median ratio of its mean on
    stroke pixels to its mean elsewhere is above 1.3. (A map that ignored the image, uniform or
    random, gives about 1; the 2-epoch cnn gives about 1.7. The threshold leaves room for seeds.)"""
    import torch

    from serving import pictures
    from training.tasks import load_task_file
    from training.tracking import explain

    task = load_task_file(tracked_cnn.checkpoint)
    mean, std = task.hparams.mean[0], task.hparams.std[0]
    raw = np.stack([np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32) / 255
                    for _, png in digits])
    x = torch.from_numpy((raw[:, None] - mean) / std)
    net = explain.explainable(task.net)
    with torch.no_grad():
        output, stages = explain.forward_with_stages(net, x)
    answers = explain.read_answers("classify", output)
    heat = explain.grad_cam(net, stages[-1][1], x, answers.columns)
    shares = []
    for h, image in zip(heat, raw):
        assert h.std() > 0.05, "a uniform map"
        shares.append(pictures.peak_share(h, image > 0.5))
    assert np.median(shares) > 1.3, np.round(shares, 2)


@pytest.fixture(scope="module")
def version_folder(tracked_cnn, tmp_path_factory) -> Path:
    """tracked_cnn exported to ONNX: OUTPUT/cnn/1."""
    from training.export import export_run
    from training.spec import ExportSpec

    output = tmp_path_factory.mktemp("explain-export")
    result = export_run(ExportSpec(run=tracked_cnn.run_id, name="cnn", output=str(output),
                                   tracking_uri=tracked_cnn.result.tracking_uri))
    assert result.path is not None
    return Path(result.path)


def test_explain_writes_the_pictures_and_the_top_classes_predict_gives(
        capsys, tracked_cnn, mlflow_server, digits, tmp_path):
    images = _digit_files(digits[::4], tmp_path, 3)
    status, out, err = waldo_main(capsys, "explain", "--model", tracked_cnn.run_id,
                                  "--tracking-uri", mlflow_server, "--output",
                                  str(tmp_path / "out"), *images)
    assert status == 0, err
    status, predicted, err = waldo_main(capsys, "predict", "--checkpoint",
                                        str(tracked_cnn.checkpoint), *images)
    assert status == 0, err
    explained = {line.split(": ")[0]: line.split(": ")[1].split(" (")[0]
                 for line in out.splitlines() if line.startswith(str(tmp_path))}
    top = {line.split(": ")[0]: line.split(": ")[1].split(" (")[0]
           for line in predicted.splitlines()}
    assert explained == top and len(top) == 3
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    stems = [Path(i).stem for i in images]
    assert written == sorted(["first_layer_filters.png", *(f"{s}.feature_maps.png" for s in stems),
                              *(f"{s}.gradcam.png" for s in stems)])
    for name in written:
        with Image.open(tmp_path / "out" / name) as image:
            assert min(image.size) >= 100 and np.asarray(image.convert("L")).std() > 10


def test_explain_on_an_onnx_version_draws_what_the_service_draws(
        capsys, tracked_cnn, version_folder, digits, tmp_path):
    """From the exported file alone (ONNX Runtime, no torch network): the top classes `waldo
    predict` gives, and the pictures from the file's explain outputs: the filters, each image's
    stage maps and its class map (occlusion: the cnn's head is dense)."""
    images = _digit_files(digits, tmp_path, 2)
    status, out, err = waldo_main(capsys, "explain", "--model", str(version_folder), "--output",
                                  str(tmp_path / "out"), *images)
    assert status == 0, err
    status, predicted, _ = waldo_main(capsys, "predict", "--checkpoint",
                                      str(tracked_cnn.checkpoint), *images)
    assert [line.split(" (")[0] for line in out.splitlines()[:2]] == \
        [line.split(" (")[0] for line in predicted.splitlines()]
    assert not err.strip()
    stems = [Path(i).stem for i in images]
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(["first_layer_filters.png", *(f"{s}.feature_maps.png" for s in stems),
                              *(f"{s}.occlusion.png" for s in stems)])
    for name in written:
        with Image.open(tmp_path / "out" / name) as image:
            assert min(image.size) >= 100 and np.asarray(image.convert("L")).std() > 10


def test_bad_input_is_one_line_and_status_2(capsys, tracked_cnn, digits, tmp_path):
    image = _digit_files(digits, tmp_path, 1)[0]
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty").mkdir()
    checkpoint = str(tracked_cnn.checkpoint)
    cases = {
        "not a model": (["--model", "nonsense", "--output", str(tmp_path / "o"), image], "nonsense"),
        "folder without a model": (["--model", str(tmp_path / "empty"), "--output",
                                    str(tmp_path / "o"), image], "model.onnx"),
        "missing image": (["--checkpoint", checkpoint, "--output", str(tmp_path / "o"),
                           str(tmp_path / "nope.png")], "nope.png"),
        "not an image": (["--checkpoint", checkpoint, "--output", str(tmp_path / "o"),
                          str(tmp_path / "a-file")], "a-file"),
        "output is a file": (["--checkpoint", checkpoint, "--output", str(tmp_path / "a-file"),
                              image], "a-file"),
        "both sources": (["--checkpoint", checkpoint, "--model", "x", "--output", "o", image],
                         "--model"),
        "missing checkpoint": (["--checkpoint", str(tmp_path / "no.ckpt"), "--output", "o", image],
                               "no.ckpt"),
    }
    for case, (argv, named) in cases.items():
        line = user_error_line(*waldo_main(capsys, "explain", *argv)[::2])
        assert named in line, (case, line)
