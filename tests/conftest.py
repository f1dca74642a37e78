"""Fixtures shared by every test, built on tests/support: the `waldo` command as a real
subprocess, a scratch working folder, trained runs (one per distinct spec per session), a real
MLflow tracking server on 127.0.0.1, a repository of exported models and one of tiny models
built with onnx.helper."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import (
    BIN,
    DIGITS_CNN,
    LOCAL_RAY_CPUS,
    S3_BUCKET,
    SERVED_LOCALIZER,
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


# --- what each test needs, as markers (pyproject.toml describes them) -------------------------
# A test that uses one of these fixtures, itself or through another fixture, gets its marks;
# tests that need the same otherwise carry the marks by hand.
FIXTURE_MARKS = {
    "trained_run": ("trains",),  # and so tracked_cnn, model_repo and every fixture built on them
    "local_ray": ("ray",),
    "mlflow_server": ("servers",),
    "s3_endpoint": ("servers",),  # and so s3
    "browser": ("browser",),
    "waldo": ("processes",),
    "loaded_modules": ("processes",),
}
NOT_IN_UNIT = {"trains", "ray", "containers", "browser"}  # such tests live in integration or e2e
UNIT = Path(__file__).parent / "unit"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            for mark in FIXTURE_MARKS.get(fixture, ()):
                item.add_marker(mark)
        marks = {m.name for m in item.iter_markers()}
        wrong = NOT_IN_UNIT & marks
        if wrong and item.path.is_relative_to(UNIT):
            raise pytest.UsageError(f"{item.nodeid} is marked {', '.join(sorted(wrong))}: "
                                    "move it to tests/integration")
        if "ray" in marks and _module(item.nodeid) not in RAY_MODULES:
            raise pytest.UsageError(f"{item.nodeid} starts Ray: add its module to RAY_MODULES "
                                    "in tests/conftest.py")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # The Ray modules go out first: together they are the longest unit of work.
        items.sort(key=lambda item: _module(item.nodeid) not in RAY_MODULES)
    else:
        # The tests on the session's local Ray run last, one after the other: the Ray they
        # share then idles beside no other test.
        items.sort(key=lambda item: "local_ray" in getattr(item, "fixturenames", ()))


# --- two workers (scripts/test.sh runs pytest-xdist's `-n 2`) ---------------------------------
# A worker takes a whole module at a time, so a module's session fixtures (trained runs,
# servers) are built once. Every module that starts Ray (the session's local Ray, `ray start`
# nodes, a driver's own Ray) goes to one worker, one after the other: two Rays at once on 2
# cores starved each other (load average 20). The collection hook above checks the list.
RAY_MODULES = frozenset({
    "tests/e2e/test_stack.py",
    "tests/integration/test_batch_predict.py",
    "tests/integration/test_cluster_cli.py",
    "tests/integration/test_ray.py",
    "tests/integration/test_ray_cluster.py",
    "tests/integration/test_ray_data.py",
})


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


if importlib.util.find_spec("xdist") is not None:
    def pytest_xdist_make_scheduler(config: pytest.Config, log):
        """Modules as units of work, the Ray modules one unit, sent out in collection order."""
        from xdist.scheduler import LoadScopeScheduling

        class ByModuleRayTogether(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                module = _module(nodeid)
                return "ray" if module in RAY_MODULES else module

        config.option.loadscopereorder = False  # by test count, it would send unit modules first
        return ByModuleRayTogether(config, log)


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


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory, trained_run) -> tuple[Path, dict]:
    """A model repository with two real models exported by `export_run`: `cnn` and
    `cnn-localize`. (repository folder, {name: ExportResult}); the results name the checkpoints."""
    from training.export import export_run
    from training.spec import ExportSpec

    output = tmp_path_factory.mktemp("model-repo") / "models"
    runs: dict[str, TrainedRun] = {"cnn": trained_run(**DIGITS_CNN),
                                   "cnn-localize": trained_run(**SERVED_LOCALIZER)}
    exported = {name: export_run(ExportSpec(run=run.run_id, name=name, output=str(output),
                                            tracking_uri=run.result.tracking_uri))
                for name, run in runs.items()}
    return output, exported


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> tuple[Path, dict]:
    """A model repository of two tiny ONNX models built in well under a second (support.tiny),
    under the same names, `cnn` and `cnn-localize`, for tests of the service rather than of a
    trained network: (repository folder, {name: TinyModel}). Read it; copy it to add versions."""
    from support.tiny import write_repository

    output = tmp_path_factory.mktemp("tiny-repo") / "models"
    return output, write_repository(output)


# --- one local Ray for the session ------------------------------------------------------------
@pytest.fixture(scope="session")
def ray_tmp() -> Iterator[Path]:
    """The temp folder (TMPDIR) of the session's local Ray workers, to find what they leave.
    Short: Ray puts its session's sockets under it, and a socket path has at most 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="wr-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def local_ray(ray_tmp):
    """One local Ray in this process (`start_local_ray`, as `waldo train --workers N` starts it)
    for every test that runs Ray in process: LOCAL_RAY_CPUS CPUs, two training workers and one
    for Ray Data's tasks. Its workers inherit TMPDIR from this process as it starts them. Tests
    that need a cluster of their own (`ray start` nodes, a driver that dies) start it themselves."""
    import ray

    from training.running.rayinit import start_local_ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(ray_tmp))
        context = start_local_ray(num_cpus=LOCAL_RAY_CPUS)
    yield context
    ray.shutdown()


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
