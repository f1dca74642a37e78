"""Fixtures shared by every test, built on tests/support: the `waldo` command as a real
subprocess, a scratch working folder, trained runs (one per distinct spec per session), a real
MLflow tracking server on 127.0.0.1, and a repository of exported models."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import (
    BIN,
    S3_BUCKET,
    RunFactory,
    TrainedRun,
    clean_env,
    modules_loaded_by,
    run_waldo,
    run_waldo_all,
    start_server,
    start_waldo,
    waldo_command,
)

# Runs in this process never join a `waldo cluster up` the developer has running.
os.environ["WALDO_CLUSTER_FILE"] = os.devnull


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in an empty working folder, with no tracking URI from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def waldo():
    """The `waldo` command as helpers: `waldo.start(*args, cwd=...)`, `waldo.run(...)`,
    `waldo.run_all({case: argv}, cwd=...)`, `waldo.command()`, `waldo.env()`."""

    class Waldo:
        start = staticmethod(start_waldo)
        run = staticmethod(run_waldo)
        run_all = staticmethod(run_waldo_all)
        command = staticmethod(waldo_command)
        env = staticmethod(clean_env)

    return Waldo


@pytest.fixture(scope="session")
def loaded_modules():
    """`loaded_modules(script)`: top-level modules a fresh interpreter holds after `script`."""
    return modules_loaded_by


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> RunFactory:
    """`trained_run(**spec_fields)` or `trained_run(spec)`: a TrainedRun (spec, result, folder,
    run_id, checkpoint), trained through `training.running.pipeline.run` the first time a test asks
    for that spec and shared by every test that asks for it again."""
    return RunFactory(tmp_path_factory)


@pytest.fixture(scope="session")
def tracked_cnn(trained_run, mlflow_server) -> TrainedRun:
    """The suite's small classifier on the tracking server: the cnn on digits, 2 epochs
    (experiment `it`). Read it, export it; do not change the run."""
    return trained_run(model="cnn", data="digits", epochs=2, tracking_uri=mlflow_server,
                       experiment="it")


# The session's two served models: a digits classifier (97%+ test accuracy) and a localizer of
# one digit on a 32x32 canvas.
SERVED_CLASSIFIER = dict(model="cnn", data="digits", epochs=8, experiment="serving-fixture")
SERVED_LOCALIZER = dict(task="localize", model="cnn", data="localization-digits", epochs=3,
                        data_args={"canvas_size": 32, "train_size": 1500, "eval_size": 200},
                        experiment="serving-fixture")


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory, trained_run) -> tuple[Path, dict]:
    """A model repository with two real models exported by `export_run`: `cnn` and
    `cnn-localize`. (repository folder, {name: ExportResult}); the results name the checkpoints."""
    from training.export import export_run
    from training.spec import ExportSpec

    output = tmp_path_factory.mktemp("model-repo") / "models"
    runs: dict[str, TrainedRun] = {"cnn": trained_run(**SERVED_CLASSIFIER),
                                   "cnn-localize": trained_run(**SERVED_LOCALIZER)}
    exported = {name: export_run(ExportSpec(run=run.run_id, name=name, output=str(output),
                                            tracking_uri=run.result.tracking_uri))
                for name, run in runs.items()}
    return output, exported


# --- a real MLflow tracking server on 127.0.0.1 -----------------------------------------------
@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` with a SQLite store and proxied artifacts; yields its URL."""
    root: Path = tmp_path_factory.mktemp("mlflow-server")

    def argv(port: int) -> list[str]:
        return [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]

    # The server's background job runner (a pool of huey consumers) is not needed for tracking
    # and would compete for the CPU with the training under test.
    server = start_server(argv, workdir=root, ready="/health",
                          env=clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    try:
        yield server.url
    finally:
        server.stop()


# --- sample images --------------------------------------------------------------------------
def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def digits() -> list[tuple[int, bytes]]:
    """20 held-out digits (two per class) from the `digits` test split, as 28x28 PNGs made exactly
    like the training images (scikit-learn's 8x8 scaled to 20x20, centred by mass on 28x28)."""
    from training.data.digits import digits_as_mnist, split_indices

    images, targets = digits_as_mnist()
    _, _, test = split_indices(targets, 0.1)  # the test split does not depend on val_fraction
    picked: list[tuple[int, bytes]] = []
    for cls in range(10):
        for i in [int(i) for i in test if int(targets[i]) == cls][:2]:
            picked.append((cls, _png(images[i, 0].numpy())))
    assert len(picked) == 20
    return picked


@pytest.fixture(scope="session")
def canvas_png() -> tuple[int, bytes, tuple[float, ...]]:
    """One held-out digit on a 32x32 canvas, as `localization-digits` draws them for cnn-localize:
    (label, PNG, true box x, y, w, h in pixels)."""
    import torch
    from sklearn.datasets import load_digits

    from training.data.digits import split_indices
    from training.data.localization import render_canvases

    bunch = load_digits()
    _, _, test = split_indices(torch.from_numpy(bunch.target).long(), 0.1)
    index = test.numpy()
    images, boxes, labels = render_canvases(
        bunch.images[index].astype(np.float32) / 16.0, bunch.target[index], 1, 32,
        empty_fraction=0.0, scale=(0.6, 0.7), noise=0.0, clutter=0, rng=np.random.default_rng(7))
    return int(labels[0]), _png(images[0, 0].numpy()), tuple(float(v) for v in boxes[0])


# --- an S3-compatible server -------------------------------------------------------------------
@pytest.fixture(scope="session")
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
    client.create_bucket(Bucket=S3_BUCKET)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=S3_BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=S3_BUCKET)
