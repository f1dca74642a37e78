"""Publish an export to the MLflow model registry.

MLflow 3 keeps models as LoggedModels (`models:/m-<id>`), not as run artifacts. An export
becomes one LoggedModel, linked to its source run, whose artifact root holds exactly
`model.onnx` and `modelcard.json`; a new version of the registered model points at it, so
`models:/<name>@<alias>` and `models:/<name>/<version>` download those two files. The registry
is where a published version lives: its files are written to a temporary folder and uploaded,
never into the local model repository, so local exports and registry versions cannot collide.
No alias moves here: an alias is the promotion gate's (training.promotion).

The version number is taken last. The card must carry it, so the files are written for the
number the registry will hand out (the highest version + 1), uploaded, and only then is the
version created; if another publish took that number meanwhile, the files are written and
uploaded again with the number this version got. A publish that fails before the version is
created takes no number, so failures leave no gap in the numbering and nothing registered.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from training.errors import WaldoError


def publish(
    tracking_uri: str,
    *,
    name: str,
    run_id: str | None,
    write: Callable[[int, Path], Path],
    tags: dict[str, str] | None = None,
    description: str | None = None,
    experiment: str = "waldo",
) -> int:
    """Register a new version of `name` and return its number.

    `write(version, folder)` writes the version's files (model.onnx + modelcard.json, the card
    carrying `version`) into a new folder under `folder` and returns it. The LoggedModel lives
    in the source run's experiment (else in `experiment`). If any step fails, the version, the
    LoggedModel and a registered model created here are removed again.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from training.tracking.runs import _experiment_id

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    created_model = False
    logged = version = None
    try:
        if run_id is not None:
            experiment_id = client.get_run(run_id).info.experiment_id
        else:
            experiment_id = _experiment_id(client, experiment)
        logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id,
                                            tags=tags, model_type="onnx")
        with tempfile.TemporaryDirectory(prefix="waldo-publish-") as tmp:
            expected = next_number(client, name)
            client.log_model_artifacts(logged.model_id, str(write(expected, Path(tmp) / "a")))
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
            if run_id is not None:  # shows the model on the run's page
                client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
            try:
                client.get_registered_model(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                client.create_registered_model(name)
                created_model = True
            with _process_tracking_uri(tracking_uri):
                mv = client.create_model_version(
                    name, source=f"models:/{logged.model_id}", run_id=run_id,
                    model_id=logged.model_id, tags=tags, description=description,
                    await_creation_for=0)
            version = int(mv.version)
            if version != expected:  # another publish took the number: the files say this one
                client.log_model_artifacts(logged.model_id, str(write(version, Path(tmp) / "b")))
        return version
    except BaseException as exc:
        _undo(client, name, logged, version, created_model)
        if isinstance(exc, MlflowException):
            message = " ".join(exc.message.split())[:300]
            raise WaldoError(f"cannot register {name!r} in MLflow at {tracking_uri}: "
                             f"{message}; nothing was registered") from None
        raise


@contextmanager
def _process_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow resolves a version's `models:/m-<id>` source through the process-wide tracking URI,
    not the client's: point it at `uri` for the call (else a `--tracking-uri` other than the
    default store registers nothing: "Logged model ... not found"), then put it back."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if before is None:  # set_tracking_uri exports the variable; it was not set before
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def next_number(client, name: str) -> int:
    """The number the registry gives the next version of `name`: its highest + 1 (1 for a new
    model). A deleted version's number is not given again, and the registry does not list
    it, so this may be low; `publish` then writes the files again."""
    found = client.search_model_versions(f"name = '{name}'") if _exists(client, name) else []
    return max((int(mv.version) for mv in found), default=0) + 1


def _exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return False


def _undo(client, name: str, logged, version: int | None, created_model: bool) -> None:
    """Best effort: leave the registry as it was."""
    steps = []
    if version is not None:
        steps.append(lambda: client.delete_model_version(name, str(version)))
    if created_model:
        steps.append(lambda: client.delete_registered_model(name))
    if logged is not None:
        steps.append(lambda: client.delete_logged_model(logged.model_id))
    for step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
