"""LightningModules: each is given a network and a loss, and owns steps, metrics and optimizers."""

from training.tasks.classification import ClassificationTask

__all__ = ["ClassificationTask"]
