"""LightningModules: each is given a network and a loss, and owns steps, metrics and optimizers."""

from __future__ import annotations

from typing import Any

from training.tasks.base import BaseTask
from training.tasks.classification import ClassificationTask
from training.tasks.localization import LocalizationTask

TASKS: dict[str, type[BaseTask]] = {"classify": ClassificationTask, "localize": LocalizationTask}


def load_task(path: str, map_location: Any = "cpu") -> BaseTask:
    """Rebuild whichever task a checkpoint holds, from the checkpoint alone."""
    import torch

    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    cls = TASKS[checkpoint.get("waldo_task", "classify")]
    return cls.load_from_checkpoint(path, map_location=map_location)


__all__ = ["TASKS", "BaseTask", "ClassificationTask", "LocalizationTask", "load_task"]
