"""The model zoo. Importing this package registers every family, so none is forgotten."""

from training.models import alexnet, googlenet, lenet, resnet, simple, vgg  # noqa: F401
from training.models._api import (
    ModelInfo,
    create_model,
    get_model_info,
    list_models,
    register_model,
)
from training.models.heads import Localizer, create_localizer

__all__ = [
    "Localizer",
    "ModelInfo",
    "create_localizer",
    "create_model",
    "get_model_info",
    "list_models",
    "register_model",
]
