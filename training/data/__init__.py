"""Data modules, chosen by name.

Importing this package is light (no torch, no Lightning): Ray Data's worker processes import
`training.data.decode` through it. The data modules and their helpers load on first use.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from training.errors import WaldoError, unknown_choice

if TYPE_CHECKING:
    from training.data.base import ImageDataModule
    from training.spec import DataSpec

_LAZY = {"ImageDataModule": ("training.data.base", "ImageDataModule"),
         "DataFacts": ("training.data.provenance", "DataFacts"),
         "describe_data": ("training.data.provenance", "describe")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _registry() -> dict[str, type[ImageDataModule]]:
    from training.data.digits import DigitsDataModule
    from training.data.folder import FolderDataModule
    from training.data.localization import (
        LocalizationDigitsDataModule,
        LocalizationFolderDataModule,
    )
    from training.data.mnist5k import MNIST5kDataModule
    from training.data.packed import LocalizationPackedDataModule, PackedDataModule
    from training.data.torchvision_sets import (
        CIFAR10DataModule,
        FashionMNISTDataModule,
        MNISTDataModule,
    )

    modules = [MNIST5kDataModule, DigitsDataModule, MNISTDataModule, FashionMNISTDataModule,
               CIFAR10DataModule, FolderDataModule, LocalizationDigitsDataModule,
               LocalizationFolderDataModule, PackedDataModule, LocalizationPackedDataModule]
    return {m.name: m for m in modules}


def list_datasets() -> list[str]:
    return sorted(_registry())


def create_datamodule(data: DataSpec) -> ImageDataModule:
    """Build the data module that `data.name` names (a job spec's `data_spec()`)."""
    from training.data.base import ImageDataModule

    registry = _registry()
    if data.name not in registry:
        raise unknown_choice("data set", data.name, registry)
    cls = registry[data.name]
    if cls.task != data.task:
        fitting = sorted(n for n, c in registry.items() if c.task == data.task)
        raise WaldoError(f"data set {data.name!r} is for task {cls.task!r}, not {data.task!r}; "
                         f"data sets for {data.task!r}: {', '.join(fitting)}")
    accepted = set(inspect.signature(cls.__init__).parameters) - set(
        inspect.signature(ImageDataModule.__init__).parameters) - {"kwargs"}
    unknown = sorted(set(data.args) - accepted)
    if unknown:
        raise WaldoError(f"data set {data.name!r} does not take option(s) {', '.join(unknown)}; "
                         f"it accepts: {', '.join(sorted(accepted)) or 'none'}")
    return cls(
        **data.args,
        batch_size=data.batch_size,
        image_size=data.image_size,
        data_dir=data.dir,
        download=data.download,
        val_fraction=data.val_fraction,
        num_workers=data.loader_workers,
        augment=data.augment,
        random_erasing=data.random_erasing,
    )


__all__ = ["DataFacts", "ImageDataModule", "create_datamodule", "describe_data", "list_datasets"]
