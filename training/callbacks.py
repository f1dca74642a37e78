"""Callbacks every run gets, in-process or on Ray: samples per rank, and box pictures."""

from __future__ import annotations

import torch
from pytorch_lightning.callbacks import Callback
from torchvision.utils import save_image

from training import viz
from training.data import ImageDataModule
from training.tracking import Run


class SamplesPerRank(Callback):
    """Log how many training images each rank saw per epoch (`train_samples_rank{r}`), so a
    distributed run shows that every worker really trained."""

    def __init__(self):
        self.count = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.count = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.count += len(batch[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        counts = trainer.strategy.all_gather(torch.tensor(self.count, device=pl_module.device))
        if trainer.is_global_zero and trainer.logger is not None:
            values = counts.reshape(-1).tolist()
            trainer.logger.log_metrics({f"train_samples_rank{r}": float(v)
                                        for r, v in enumerate(values)}, step=trainer.global_step)


class BoxPictures(Callback):
    """Every validation epoch, log a grid of validation images with true (green) and
    predicted (red) boxes and labels, as `boxes/epoch_NNN.png`."""

    def __init__(self, run: Run, dm: ImageDataModule, count: int = 16):
        self.run, self.dm, self.count = run, dm, count
        self._batch = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        if batch_idx == 0 and outputs is not None:
            x, target = batch
            n = self.count
            self._batch = (x[:n].detach().float().cpu(), target[:n].cpu(), outputs[:n].float().cpu())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._batch is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        grid = viz.box_grid(*self._batch, mean=self.dm.mean, std=self.dm.std, labels=self.dm.labels)
        name = f"epoch_{trainer.current_epoch:03d}.png"
        self.run.log_image_file(lambda path: save_image(grid, path), name, artifact_path="boxes")
        self._batch = None
