"""Offline scoring, `waldo predict --model MODEL --output DEST SOURCE...`, against real servers on
127.0.0.1: the inference service (`waldo serve`), an S3 server (moto_server) and MLflow.

A folder and a bucket scored into Parquet give the service's own answers for the same images
(the tiny models of support.tiny, whose service the test starts and asks); a corrupt object is
listed in `_errors.csv` while the rest is scored; a run killed with SIGKILL part way and started
again has every image exactly once; a bad model URI or output is one line and exit status 2; and
the same folder on Ray Data (one scoring actor, the session's local Ray) gives the same answers.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from support import S3_BUCKET, wait_until, waldo_main
from support.images import truncated_jpeg, upload_folder
from support.serving import waldo_serve
from support.tiny import grey, png_bytes, sample_images

TOLERANCE = 1e-6


# --- images and the service's answers ----------------------------------------------------------
def image_folder(root: Path) -> Path:
    """Bars and greys (PNG, 28x28 greyscale), RGB JPEGs and PNGs of other sizes (JPEGs decode in
    draft mode, as the service decodes them) and a 16-bit PNG, some in sub-folders."""
    rng = np.random.default_rng(3)
    (root / "bars").mkdir(parents=True)
    (root / "photos" / "deeper").mkdir(parents=True)
    for i, pixels in enumerate(sample_images()):
        (root / "bars" / f"bar{i:02d}.png").write_bytes(png_bytes(pixels))
    for k in (0, 4, 9):
        (root / f"grey{k}.png").write_bytes(png_bytes(grey(k)))
    for i, (h, w) in enumerate([(120, 160), (64, 48), (300, 200)]):
        level = rng.integers(0, 256)
        pixels = (rng.normal(level, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "photos" / f"photo{i}.jpg", quality=85)
        Image.fromarray(pixels).save(root / "photos" / "deeper" / f"photo{i}.png")
    wide = (rng.integers(0, 65536, (40, 30))).astype(np.uint16)
    Image.fromarray(wide).save(root / "photos" / "wide.png")
    (root / "notes.txt").write_text("not an image, and not scored: no image extension\n")
    return root


@pytest.fixture(scope="module")
def service(tiny_repo, tmp_path_factory):
    """The inference service on the tiny repository, for the whole module."""
    repo, _ = tiny_repo
    server = waldo_serve(repo, tmp_path_factory.mktemp("batch-predict-service"))
    yield server
    server.stop()


def service_answers(url: str, model: str, folder: Path) -> dict[str, dict]:
    """The service's answer for every image file under `folder`, by its path relative to it."""
    out = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for path in sorted(folder.rglob("*")):
            if path.suffix not in (".png", ".jpg"):
                continue
            answer = client.post(f"/v1/models/{model}/predict",
                                 files={"file": (path.name, path.read_bytes(), "image/png")})
            assert answer.status_code == 200, answer.text
            out[path.relative_to(folder).as_posix()] = answer.json()["predictions"][0]
    return out


def read_parts(location: str, filesystem=None) -> list[dict]:
    """Every row of every part of a scoring output, the `_` files left out as readers do."""
    return pq.read_table(location, filesystem=filesystem).to_pylist()


def assert_same_answers(rows: list[dict], answers: dict[str, dict], prefix: str, task: str) -> None:
    by_path = {row["path"].removeprefix(prefix): row for row in rows}
    assert sorted(by_path) == sorted(answers)
    for name, answer in answers.items():
        row = by_path[name]
        assert row["label"] == answer["label"], name
        assert row["probability"] == pytest.approx(answer["probability"], abs=TOLERANCE), name
        if task == "classify":
            assert row["top_k_labels"] == [t["label"] for t in answer["top_k"]], name
            np.testing.assert_allclose(row["top_k_probabilities"],
                                       [t["probability"] for t in answer["top_k"]], atol=TOLERANCE)
        else:
            assert row["object"] == answer["object"], name
            assert row["p_c"] == pytest.approx(answer["p_c"], abs=TOLERANCE), name
            for key in ("x", "y", "w", "h"):
                assert row["box"][key] == pytest.approx(answer["box"][key], rel=TOLERANCE,
                                                        abs=TOLERANCE), (name, key)


# --- a folder and a bucket, as the service answers --------------------------------------------
@pytest.mark.parametrize("model", ["cnn", "cnn-localize"])
def test_a_folder_scores_as_the_service_answers(service, tiny_repo, tmp_path, mlflow_server, capsys,
                                                model):
    from mlflow.tracking import MlflowClient

    repo, _ = tiny_repo
    folder = image_folder(tmp_path / "images")
    output = tmp_path / "scores"
    status, out, err = waldo_main(capsys, "predict", "--model", str(repo / model / "1"), "--output",
                                  str(output), "--tracking-uri", mlflow_server, "--batch-size", "4",
                                  str(folder))
    assert status == 0, err
    rows = read_parts(str(output))
    task = "classify" if model == "cnn" else "localize"
    assert_same_answers(rows, service_answers(service.url, model, folder), f"{folder}/", task)
    assert {(row["model_name"], row["model_version"]) for row in rows} == {(model, "1")}
    photo = next(row for row in rows if row["path"].endswith("photo2.jpg"))
    assert (photo["width"], photo["height"]) == (200, 300)  # the image's own size, not the input's

    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["images"] == manifest["scored"] == len(rows) == 22 and manifest["errors"] == 0
    assert manifest["model"]["name"] == model and manifest["sources"][0]["kind"] == "folder"
    assert (output / "_errors.csv").read_text() == "path,reason\n"
    assert "predict:" in err and f"scored {len(rows)} images with {model} version 1" in out

    run = MlflowClient(mlflow_server).get_run(manifest["last_run"]["mlflow_run_id"])
    assert run.data.params["model_version"] == "1" and run.data.params["source"] == str(folder)
    assert run.data.metrics["images_scored"] == len(rows) and run.data.metrics["images_per_second"] > 0
    artifacts = [a.path for a in MlflowClient(mlflow_server).list_artifacts(run.info.run_id)]
    assert "_manifest.json" in artifacts


def test_a_bucket_scores_as_the_service_answers_and_a_corrupt_object_is_listed(
        service, tiny_repo, tmp_path, mlflow_server, s3, capsys):
    from pyarrow import fs

    from training.data.objects import s3_filesystem

    repo, _ = tiny_repo
    folder = image_folder(tmp_path / "images")
    url = upload_folder(s3, folder, S3_BUCKET, "uploads/today")
    s3.put_object(Bucket=S3_BUCKET, Key="uploads/today/photos/corrupt.png", Body=b"\x89PNG not really")
    s3.put_object(Bucket=S3_BUCKET, Key="uploads/today/empty.jpg", Body=b"")
    truncated = truncated_jpeg(tmp_path / "cut.jpg").read_bytes()
    s3.put_object(Bucket=S3_BUCKET, Key="uploads/today/photos/deeper/cut.jpg", Body=truncated)
    output = f"s3://{S3_BUCKET}/scores/today"
    status, out, err = waldo_main(capsys, "predict", "--model", str(repo / "cnn" / "1"), "--output",
                                  output, "--tracking-uri", mlflow_server, url)
    assert status == 0, err

    filesystem = s3_filesystem()
    rows = read_parts(output.removeprefix("s3://"), filesystem)
    assert_same_answers(rows, service_answers(service.url, "cnn", folder), f"{url}/", "classify")
    with filesystem.open_input_stream(f"{S3_BUCKET}/scores/today/_errors.csv") as f:
        errors = {row["path"]: row["reason"] for row in csv.DictReader(io.StringIO(f.read().decode()))}
    assert set(errors) == {f"{url}/photos/corrupt.png", f"{url}/empty.jpg", f"{url}/photos/deeper/cut.jpg"}
    assert "not an image in a known format" in errors[f"{url}/photos/corrupt.png"]
    assert errors[f"{url}/empty.jpg"] == "empty (0 bytes)"
    assert "cannot be decoded" in errors[f"{url}/photos/deeper/cut.jpg"]
    assert "3 images could not be read" in out
    listed = filesystem.get_file_info(fs.FileSelector(f"{S3_BUCKET}/scores/today"))
    assert {"_manifest.json", "_errors.csv"} <= {info.base_name for info in listed}


def test_a_pack_and_a_list_of_images_score_as_their_files(tiny_repo, tmp_path, mlflow_server):
    from training.data import create_datamodule
    from training.data.packed import pack
    from training.scoring import predict
    from training.spec import DataSpec, PredictSpec

    repo, _ = tiny_repo
    folder = image_folder(tmp_path / "images")
    module = create_datamodule(DataSpec(task="classify", name="folder", dir=str(folder), val_fraction=0.2))
    manifest = pack(module, str(tmp_path / "packed"))
    listing = tmp_path / "lists" / "today.txt"
    listing.parent.mkdir()
    listing.write_text(f"# uploads\n../images/grey4.png\n\n{folder / 'bars' / 'bar03.png'}\n"
                       "../images/gone.png\n")

    def score(name: str, *sources: Path) -> dict[str, dict]:
        spec = PredictSpec(model=str(repo / "cnn" / "1"), sources=[str(s) for s in sources],
                           output=str(tmp_path / name), tracking_uri=mlflow_server)
        predict(spec, stream=io.StringIO())
        return {row.pop("path"): row for row in read_parts(spec.output)}

    files = score("from-files", folder)
    packed = score("from-pack", tmp_path / "packed")
    assert len(packed) == sum(split.count for split in manifest.splits.values()) == 19
    assert {path: files[path] for path in packed} == packed  # the same bytes, the same answers
    listed = score("from-list", listing)
    wanted = (str(folder / "grey4.png"), str(folder / "bars" / "bar03.png"))
    assert listed == {path: files[path] for path in wanted}
    errors = (tmp_path / "from-list" / "_errors.csv").read_text().splitlines()
    assert errors[1:] == [f"{folder / 'gone.png'},does not exist"]
    # a file that could not be read is no verdict: once it is there, the next run scores it alone
    (folder / "gone.png").write_bytes((folder / "grey4.png").read_bytes())
    again = score("from-list", listing)
    gone = str(folder / "gone.png")
    assert set(again) == {*wanted, gone} and again[gone] == files[wanted[0]]
    assert (tmp_path / "from-list" / "_errors.csv").read_text() == "path,reason\n"


# --- killed and resumed ---------------------------------------------------------------------------
def test_a_killed_run_started_again_scores_every_image_once(tiny_repo, tmp_path, mlflow_server, waldo):
    repo, _ = tiny_repo
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):  # one image a part, each written and renamed: seconds of work
        (folder / f"{i:04d}.png").write_bytes(png_bytes(grey(i % 10)))
    (folder / "bad.png").write_bytes(b"not a png")
    output = tmp_path / "scores"
    argv = ["predict", "--model", str(repo / "cnn" / "1"), "--output", str(output), "--tracking-uri",
            mlflow_server, "--batch-size", "1", "--part-size", "1", "--threads", "1", str(folder)]

    def parts() -> list[Path]:
        return sorted(output.glob("part-*.parquet")) if output.exists() else []

    first = waldo.start(*argv, cwd=tmp_path)
    try:
        wait_until(lambda: parts(), what="a first committed part", timeout=120, proc=first)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    done_before = sum(pq.read_metadata(p).num_rows for p in parts())
    assert 0 < done_before < 1500, "the run was not killed part way"
    assert not (output / "_manifest.json").exists()

    again = waldo.run(*argv, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr
    rows = read_parts(str(output))
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)) == 1500  # none twice, none missing
    assert set(paths) == {str(folder / f"{i:04d}.png") for i in range(1500)}
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["last_run"]["before"] >= done_before and manifest["missing"] == 0
    errors = (output / "_errors.csv").read_text().splitlines()
    assert errors[0] == "path,reason" and len(errors) == 2 and errors[1].startswith(f"{folder / 'bad.png'},")


# --- user errors ------------------------------------------------------------------------------
def test_a_bad_model_uri_or_output_is_one_line_and_status_2(tiny_repo, tmp_path, mlflow_server, s3, waldo):
    repo, _ = tiny_repo
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(png_bytes(grey(3)))
    (tmp_path / "a-file").write_text("x")
    good = str(repo / "cnn" / "1")
    base = ["predict", "--tracking-uri", mlflow_server]
    cases = {
        "malformed uri": ([*base, "--model", "models:/cnn@", "--output", "o1", str(images)],
                          "'models:/cnn@'"),
        "unknown model": ([*base, "--model", "models:/no-such-model@production", "--output", "o2",
                           str(images)], "unknown model 'no-such-model'"),
        "no version folder": ([*base, "--model", str(repo / "cnn" / "7"), "--output", "o3", str(images)],
                              "does not exist"),
        "output is a file": ([*base, "--model", good, "--output", str(tmp_path / "a-file"), str(images)],
                             "is a file"),
        "no bucket": ([*base, "--model", good, "--output", "s3://no-such-bucket/scores", str(images)],
                      "bucket 'no-such-bucket' does not exist"),
        "no source": ([*base, "--model", good, "--output", "o4", str(tmp_path / "nope")], "does not exist"),
        "no model flag": (["predict", "--output", "o5", str(images)], "--model MODEL"),
    }
    done = waldo.run_all({case: argv for case, (argv, _) in cases.items()}, cwd=tmp_path)
    for case, (status, out, err) in done.items():
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 2 and len(lines) == 1 and "Traceback" not in err, (case, status, err)
        assert out == "", (case, out)
        assert lines[0].startswith("waldo predict: error:") and cases[case][1] in lines[0], (case, lines)
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3", "o4"))  # nothing made


# --- Ray Data ---------------------------------------------------------------------------------
def test_ray_data_with_one_worker_gives_the_in_process_answers(local_ray, tiny_repo, tmp_path, mlflow_server):
    from training.scoring import predict
    from training.spec import PredictSpec

    repo, _ = tiny_repo
    folder = image_folder(tmp_path / "images")
    (folder / "broken.png").write_bytes(b"broken")
    results = {}
    for workers in (0, 1):
        spec = PredictSpec(model=str(repo / "cnn" / "1"), sources=[str(folder)], batch_size=8,
                           part_size=10, output=str(tmp_path / f"scores-{workers}"), workers=workers,
                           tracking_uri=mlflow_server)
        result = predict(spec)
        assert (result.scored, result.errors) == (22, 1)
        results[workers] = {row["path"]: row for row in read_parts(spec.output)}
    assert sorted(results[1]) == sorted(results[0])
    for path, row in results[0].items():
        ray_row = results[1][path]
        assert ray_row["top_k_labels"] == row["top_k_labels"]
        np.testing.assert_allclose(ray_row["top_k_probabilities"], row["top_k_probabilities"], atol=TOLERANCE)
    errors = (tmp_path / "scores-1" / "_errors.csv").read_text().splitlines()
    assert errors[1].startswith(f"{folder / 'broken.png'},")
    assert len(list((tmp_path / "scores-1").glob("part-*.parquet"))) >= 3  # parts of at most 10
