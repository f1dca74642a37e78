"""Trained runs for the tests: each distinct spec trains once per test session.

`training.running.pipeline.run(spec)` does the work, so a spec may train on Ray (`workers`) and export
(`export`, `publish`, `alias`) like `waldo train` would. Each spec trains in a folder of its
own, where a local MLflow store (`./mlflow.db`) and the checkpoints (`./waldo_runs`) land
unless the spec names a tracking server or a storage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from training.spec import TrainSpec

# Specs that several tests train, so that the session trains each once (`trained_run`):
# the digits classifier that is served (`model_repo`, 97%+ test accuracy) and exported
# (tests/integration/test_export_runs.py), and the localizer of one digit on a 32x32 canvas
# that is served.
DIGITS_CNN = dict(model="cnn", data="digits", epochs=8)  # in the default experiment, `waldo`
# The cnn that `waldo train --publish --alias production` registers (as `cnn`) on the session's
# tracking server (add tracking_uri=mlflow_server): tests/integration/test_registry.py and
# test_init_from.py (which starts runs from it).
PUBLISHED_CNN = dict(model="cnn", data="digits", epochs=3, experiment="it-registry", publish=True,
                     alias="production")
SERVED_LOCALIZER = dict(task="localize", model="cnn", data="localization-digits", epochs=3,
                        data_args={"canvas_size": 32, "train_size": 1500, "eval_size": 200},
                        experiment="serving-fixture")


@contextlib.contextmanager
def in_folder(folder: Path) -> Iterator[Path]:
    """Work in `folder`, with no MLflow tracking URI or Ray address from the environment."""
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("RAY_ADDRESS", raising=False)
    try:
        yield folder
    finally:
        mp.undo()


@dataclass(frozen=True)
class TrainedRun:
    """A finished run: its spec, `training.running.pipeline.run`'s result and the folder it ran in."""

    spec: TrainSpec
    result: Any  # training.running.steps.TrainResult: run_id, tracking_uri, metrics, export, ...
    folder: Path

    @property
    def run_id(self) -> str:
        return self.result.run_id

    @property
    def logged_spec(self) -> TrainSpec:
        """The spec as the run records it (params, spec.yaml): `training.running.pipeline.run` makes
        its locations absolute, in the folder it ran in, before it starts."""
        from training.running.steps import resolve_locations

        with in_folder(self.folder):
            return resolve_locations(self.spec)

    @property
    def checkpoint(self) -> Path:
        """The best checkpoint as a local file (relative locations are the run folder's)."""
        location = str(self.result.best_checkpoint)
        if "://" in location and not location.startswith("file://"):
            raise ValueError(f"the best checkpoint of run {self.run_id} is not local: {location}")
        return self.folder / location.removeprefix("file://")


def artifact_paths(client, run_id: str, path: str | None = None) -> list[str]:
    """Every file artifact of MLflow run `run_id` (`client`: an MlflowClient), recursively."""
    out = []
    for info in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, info.path) if info.is_dir else [info.path]
    return out


class RunFactory:
    """`runs(spec)` or `runs(**fields)`: the TrainedRun of that spec, trained on first use.

    Keyword fields build `TrainSpec(progress_bar=False, **fields)`. Specs that compare equal
    share one run; a spec whose training failed fails again at once, with the same error.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory):
        self._tmp = tmp_path_factory
        self._runs: dict[str, TrainedRun | BaseException] = {}

    def __call__(self, spec: TrainSpec | None = None, /, **fields: Any) -> TrainedRun:
        if spec is None:
            spec = TrainSpec(**{"progress_bar": False, **fields})
        elif fields:
            raise TypeError("give a TrainSpec or its fields, not both")
        key = spec.model_dump_json()
        if key not in self._runs:
            self._runs[key] = self._train(spec)
        outcome = self._runs[key]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _train(self, spec: TrainSpec) -> TrainedRun | BaseException:
        from training.running.pipeline import run

        folder = self._tmp.mktemp(f"run-{spec.task}-{spec.model}")
        try:
            with in_folder(folder):
                return TrainedRun(spec, run(spec), folder)
        except Exception as exc:  # cached: the next test asking for it fails without retraining
            return exc
