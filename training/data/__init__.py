"""Data modules, chosen by name."""

from __future__ import annotations

import inspect

from training.data.base import ImageDataModule
from training.data.provenance import DataFacts
from training.data.provenance import describe as describe_data
from training.errors import WaldoError, unknown_choice
from training.spec import DataSpec


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
