"""Data modules, chosen by name."""

from __future__ import annotations

import inspect

from training.data.base import ImageDataModule
from training.errors import WaldoError, unknown_choice
from training.spec import TrainSpec


def _registry() -> dict[str, type[ImageDataModule]]:
    from training.data.digits import DigitsDataModule
    from training.data.folder import FolderDataModule
    from training.data.localization import (
        LocalizationDigitsDataModule,
        LocalizationFolderDataModule,
    )
    from training.data.torchvision_sets import (
        CIFAR10DataModule,
        FashionMNISTDataModule,
        MNISTDataModule,
    )

    modules = [DigitsDataModule, MNISTDataModule, FashionMNISTDataModule, CIFAR10DataModule,
               FolderDataModule, LocalizationDigitsDataModule, LocalizationFolderDataModule]
    return {m.name: m for m in modules}


def list_datasets() -> list[str]:
    return sorted(_registry())


def create_datamodule(spec: TrainSpec) -> ImageDataModule:
    """Build the data module that `spec.data` names, configured from the spec."""
    registry = _registry()
    if spec.data not in registry:
        raise unknown_choice("data set", spec.data, registry)
    cls = registry[spec.data]
    if cls.task != spec.task:
        fitting = sorted(n for n, c in registry.items() if c.task == spec.task)
        raise WaldoError(f"data set {spec.data!r} is for task {cls.task!r}, not {spec.task!r}; "
                         f"data sets for {spec.task!r}: {', '.join(fitting)}")
    accepted = set(inspect.signature(cls.__init__).parameters) - set(
        inspect.signature(ImageDataModule.__init__).parameters) - {"kwargs"}
    unknown = sorted(set(spec.data_args) - accepted)
    if unknown:
        raise WaldoError(f"data set {spec.data!r} does not take option(s) {', '.join(unknown)}; "
                         f"it accepts: {', '.join(sorted(accepted)) or 'none'}")
    return cls(
        **spec.data_args,
        batch_size=spec.batch_size,
        image_size=spec.image_size,
        data_dir=spec.data_dir,
        download=spec.download,
        val_fraction=spec.val_fraction,
        num_workers=spec.loader_workers,
    )


__all__ = ["ImageDataModule", "create_datamodule", "list_datasets"]
