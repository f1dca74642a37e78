"""Registered versions of the tiny models (support.tiny) in a real MLflow registry, without
training or exporting: a LoggedModel holding model.onnx and modelcard.json, as `waldo export
--publish` leaves it, and a model version pointing at it. (Imported where used: it loads
mlflow and onnx.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from serving.modelcard import InputSpec, ModelCard
from support.tiny import CLASSIFIER, classifier, localizer
from support.tiny import card as tiny_card
from training.export.layout import write_version

EXPERIMENT = "registry-tests"


def register_tiny(tracking_uri: str, name: str, *, task: str = "classify",
                  labels: list[str] | None = None, size: int | None = None) -> str:
    """Register one more version of `name`: the tiny classifier (or, with task="localize", the
    tiny localizer), its card changed where `labels` or `size` say. Returns the version number."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = (experiment.experiment_id if experiment is not None
                     else client.create_experiment(EXPERIMENT))
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    logged = client.create_logged_model(experiment_id, name=name, model_type="onnx")
    mv = client.create_model_version(name, source=f"models:/{logged.model_id}",
                                     model_id=logged.model_id, await_creation_for=0)

    def card_for(number: int) -> ModelCard:
        made = tiny_card(CLASSIFIER if task == "classify" else "cnn-localize", number)
        update: dict = {"name": name}
        if labels is not None:
            update["labels"] = labels
        if size is not None:
            update["input"] = InputSpec(channels=1, height=size, width=size, mean=[0.0], std=[1.0])
        return made.model_copy(update=update)

    with tempfile.TemporaryDirectory(prefix="tiny-version-") as tmp:
        folder, _ = write_version(classifier() if task == "classify" else localizer(), card_for,
                                  output=Path(tmp), name=name, version=int(mv.version))
        client.log_model_artifacts(logged.model_id, str(folder))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return str(mv.version)
