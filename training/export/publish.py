"""Publish an export to the MLflow model registry.

MLflow 3 keeps models as LoggedModels (`models:/m-<id>`), not as run artifacts. An export
becomes one LoggedModel, linked to its source run, whose artifact root holds exactly
`model.onnx` and `modelcard.json`; a new version of the registered model points at it, so
`models:/<name>@<alias>` and `models:/<name>/<version>` download those two files. Aliases are
moved with `set_registered_model_alias`; the deprecated stages are not used. Alias names are
checked by `ExportSpec` before anything is exported.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from training.errors import WaldoError


def publish(
    tracking_uri: str,
    *,
    name: str,
    run_id: str | None,
    write: Callable[[int], Path],
    alias: str | None = None,
    tags: dict[str, str] | None = None,
    description: str | None = None,
    experiment: str = "waldo",
) -> int:
    """Register a new version of `name` and return its number.

    The version number is taken first, because the files carry it: `write(version)` writes
    the version folder (model.onnx + modelcard.json), which is then uploaded as the
    LoggedModel's artifacts. The LoggedModel lives in the source run's experiment (else in
    `experiment`). If any step fails, the version, the LoggedModel, a registered model created
    here and the written folder are removed again, and no alias moves.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from training.tracking.runs import _experiment_id

    client = MlflowClient(tracking_uri)
    created_model = False
    logged = version = folder = None
    try:
        if run_id is not None:
            experiment_id = client.get_run(run_id).info.experiment_id
        else:
            experiment_id = _experiment_id(client, experiment)
        logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id,
                                            tags=tags, model_type="onnx")
        try:
            client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            client.create_registered_model(name)
            created_model = True
        mv = client.create_model_version(
            name, source=f"models:/{logged.model_id}", run_id=run_id, model_id=logged.model_id,
            tags=tags, description=description, await_creation_for=0,
        )
        version = int(mv.version)
        folder = write(version)
        client.log_model_artifacts(logged.model_id, str(folder))
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        if run_id is not None:  # shows the model on the run's page
            client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        if alias is not None:
            client.set_registered_model_alias(name, alias, str(version))
        return version
    except BaseException as exc:
        _undo(client, name, logged, version, created_model, folder)
        if isinstance(exc, MlflowException):
            message = " ".join(exc.message.split())[:300]
            raise WaldoError(f"cannot register {name!r} in MLflow at {tracking_uri}: "
                             f"{message}") from None
        raise


def _undo(client, name: str, logged, version: int | None, created_model: bool,
          folder: Path | None) -> None:
    """Best effort: leave the registry and the repository as they were."""
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
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
