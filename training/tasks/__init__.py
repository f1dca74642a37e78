"""LightningModules: each is given a network and a loss, and owns steps, metrics and optimizers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.errors import WaldoError
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


def load_task_file(path: str | Path) -> BaseTask:
    """`load_task` for a path a user gave: a missing or foreign file is a WaldoError."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise WaldoError(f"checkpoint {str(path)!r} does not exist")
    try:
        return load_task(str(path))
    except (KeyError, AttributeError, RuntimeError, EOFError, OSError,
            pickle.UnpicklingError) as exc:
        reason = " ".join(str(exc).split())[:200]  # one line, whatever the unpickler said
        raise WaldoError(f"{str(path)!r} is not a Waldo checkpoint "
                         f"({type(exc).__name__}: {reason})") from None


__all__ = ["TASKS", "BaseTask", "ClassificationTask", "LocalizationTask", "load_task",
           "load_task_file"]
