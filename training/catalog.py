"""The names a job spec may use, without importing torch: every network and every data set.

`training.spec` checks `model` and `data` against these lists, so the jobs API refuses an
unknown name when a job is submitted, not minutes later on a Ray worker. The registries
themselves (`training.models.list_models()`, `training.data.list_datasets()`) need torch;
tests/unit/test_spec_hardening.py checks that these lists equal them, so adding a network or a
data set without naming it here fails a test instead of drifting.
"""

from __future__ import annotations

from typing import Literal

Task = Literal["classify", "localize"]

MODEL_NAMES: tuple[str, ...] = (
    "alexnet", "cnn", "googlenet", "lenet5", "mlp", "resnet18", "resnet34", "resnet50",
    "vgg11", "vgg16", "vgg19",
)

# data set name -> the task whose targets it yields
DATASETS: dict[str, Task] = {
    "cifar10": "classify",
    "digits": "classify",
    "fashion-mnist": "classify",
    "folder": "classify",
    "localization-digits": "localize",
    "localization-folder": "localize",
    "localization-packed": "localize",
    "mnist": "classify",
    "mnist-5k": "classify",
    "packed": "classify",
}


# data set name -> what its pictures are, which decides what `--augment basic` does and the
# recipe's defaults (`training.specrecipe`): centred digits (a small random affine, no flips)
# or photos (a random resized crop and a horizontal flip).
DataKind = Literal["digits", "photos"]
DATA_KINDS: dict[str, DataKind] = {
    "cifar10": "photos",
    "digits": "digits",
    "fashion-mnist": "digits",
    "folder": "photos",
    "localization-digits": "digits",
    "localization-folder": "photos",
    "localization-packed": "photos",
    "mnist": "digits",
    "mnist-5k": "digits",
    "packed": "photos",
}


def datasets_for(task: str) -> list[str]:
    """The data sets whose targets suit `task`, sorted."""
    return sorted(name for name, kind in DATASETS.items() if kind == task)


__all__ = ["DATASETS", "DATA_KINDS", "MODEL_NAMES", "DataKind", "Task", "datasets_for"]
