"""Callbacks every run gets, in-process or on Ray: a stop on a nan or inf loss, the epoch's
facts (samples per rank, the share of time waiting for data), a line per epoch where no
progress bar is drawn, box pictures, and the recipe's weight average."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn
from torchvision.utils import save_image

from training.data import ImageDataModule
from training.errors import WaldoError
from training.tracking import viz
from training.tracking.runs import Run


class TrainingDiverged(WaldoError):
    """The loss or the weights of a run became nan or inf: its hyperparameters (most often the
    learning rate) make it diverge. The CLI exits 1, not 2: unlike a refused spec, this run
    exists, and ends FAILED."""

    exit_code = 1


class StopOnNonFinite(Callback):
    """Stop a run as soon as its training loss is nan or inf, naming the epoch and step, and
    before any checkpoint can keep the broken weights.

    Each step records on the loss's device the first step whose loss was not finite, which
    needs no host sync. The host reads that record every `every` steps: each step on the CPU,
    where reading costs microseconds, every 32 on an accelerator, where a read would stall the
    queue of kernels on every step. It always reads it, and checks the weights and buffers
    themselves (a step can break them with a finite loss), before validation and at the end of
    each training epoch: where checkpoints are written. Lightning runs ModelCheckpoint after
    every other callback, and a Ray run lists this one before its report callback.
    """

    def __init__(self, advice: str = "", every: int | None = None):
        self.advice, self.every = advice, every
        self._first_bad: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._step = 0
        self._unread = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step  # the optimizer steps taken before this batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach().float().sum()
        if loss.device.type == "cpu" and (self.every or 1) == 1:
            # On the CPU reading costs nothing: check the value itself, no device-side record.
            value = loss.item()
            if not math.isfinite(value):
                raise self._fail(f"training loss became {value} at epoch {trainer.current_epoch}, "
                                 f"step {self._step}")
            return
        if self._first_bad is None:
            none = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._first_bad = (none, none.clone(), torch.zeros((), device=loss.device))
        epoch, step, value = self._first_bad
        new = torch.logical_not(torch.isfinite(loss)) & (epoch < 0)
        self._first_bad = (torch.where(new, trainer.current_epoch, epoch),
                           torch.where(new, self._step, step), torch.where(new, loss, value))
        self._unread += 1
        if self._unread >= (self.every or (1 if loss.device.type == "cpu" else 32)):
            self._read()

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._read()
            self._check_weights(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._read()
        self._check_weights(trainer, pl_module)

    def _fail(self, what: str) -> TrainingDiverged:
        return TrainingDiverged(f"{what}; the run diverged" + (f": {self.advice}" if self.advice else ""))

    def _read(self) -> None:
        self._unread = 0
        if self._first_bad is None:
            return
        epoch, step, value = self._first_bad
        if epoch.item() >= 0:  # the one read; the others only once it found a bad step
            raise self._fail(f"training loss became {value.item()} at epoch {epoch.item()}, "
                             f"step {step.item()}")

    def _check_weights(self, trainer, pl_module) -> None:
        tensors = [t for t in (*pl_module.parameters(), *pl_module.buffers()) if t.is_floating_point()]
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            raise self._fail(f"the weights became nan or inf by epoch {trainer.current_epoch}, "
                             f"step {trainer.global_step}")


class EpochFacts(Callback):
    """Per epoch: how many training images each rank saw (`train_samples_rank{r}`) and how many
    ranks there were (`workers`), so a distributed run shows that every worker really trained
    and an elastic one how its group changed, and the share of the training loop's
    wall time spent waiting for the next batch (`data_wait_fraction`, the worst rank's; a
    GPU that starves on input shows it at once). Also runs `at_fit_start(trainer, module)` once
    (the run's data facts, `training.running.steps`). One callback rather than three: Lightning calls
    every hook of every callback on every step.

    The wait is the host's time from the end of one step to the start of the next (and from
    the epoch's start to its first step): fetching and collating the batch, and moving it to the
    device, which Lightning does before `on_train_batch_start`."""

    def __init__(self, at_fit_start: Callable[[pl.Trainer, pl.LightningModule], None] | None = None):
        self.count = 0
        self.wait = 0.0
        self.started = self.last_end = 0.0
        self.at_fit_start = at_fit_start

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.at_fit_start is not None:
            self.at_fit_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.count, self.wait = 0, 0.0
        self.started = self.last_end = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.wait += time.perf_counter() - self.last_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.count += len(batch[0])
        self.last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        looped = self.last_end - self.started  # the training steps, not the validation after them
        fraction = self.wait / looped if looped > 0 else 0.0
        facts = torch.tensor([self.count, fraction], dtype=torch.float64, device=pl_module.device)
        gathered = trainer.strategy.all_gather(facts).reshape(-1, 2)
        if trainer.is_global_zero and trainer.logger is not None:
            metrics = {f"train_samples_rank{r}": float(v) for r, v in enumerate(gathered[:, 0].tolist())}
            metrics["data_wait_fraction"] = float(gathered[:, 1].max())
            metrics["workers"] = float(len(gathered))  # an elastic job's group changes size
            trainer.logger.log_metrics(metrics, step=trainer.global_step)


def shows_progress_bar(setting: bool | None) -> bool:
    """The spec's `progress_bar`: True or False as given; None (the default) draws Lightning's
    bar only where it can redraw itself, when stdout (where its bar writes) is a terminal. In
    a log file, a job's logs or CI, a bar becomes thousands of lines: `EpochLines` prints one
    line per epoch there instead."""
    if setting is not None:
        return setting
    return sys.stdout.isatty()


class EpochLines(Callback):
    """One line per epoch on stdout, from rank 0, with the epoch's metrics, for runs without a
    progress bar: `epoch 3/60: train_acc=0.8800 train_loss=0.4120 val_acc=0.9100 val_loss=0.3012`.

    A long run prints at most about `max_lines` of them (the first epoch, every k-th, and the
    last, also when early stopping ends the run), so the quickstart's 100 epochs stay readable.
    An epoch's line is printed once all of it is in `trainer.callback_metrics`: the task logs
    its training metrics in its own `on_train_epoch_end`, which Lightning calls after the
    callbacks', so the line comes at the next epoch's start, or at the end of training."""

    def __init__(self, max_lines: int = 15):
        self.max_lines = max_lines
        self._printed = -1  # the last epoch printed

    def on_train_start(self, trainer, pl_module) -> None:
        self._printed = trainer.current_epoch - 1  # a resumed fit: its earlier epochs are done

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        epoch, total = trainer.current_epoch - 1, trainer.max_epochs  # the epoch just done
        every = max(1, math.ceil(total / self.max_lines)) if total and total > 0 else 1
        if epoch > self._printed and (epoch == 0 or (epoch + 1) % every == 0):
            self._print(trainer, epoch)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch - 1 > self._printed:
            self._print(trainer, trainer.current_epoch - 1)

    def _print(self, trainer, epoch: int) -> None:
        self._printed = epoch
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(("train_", "val_")) and getattr(v, "numel", lambda: 1)() == 1}
        order = sorted(metrics, key=lambda k: (not k.startswith("train_"), k))
        shown = " ".join(f"{k}={metrics[k]:.4f}" for k in order)
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        print(f"epoch {epoch + 1}{total}: {shown}".rstrip(), flush=True)


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


def ema_with_warmup(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """An `AveragedModel` update (its `multi_avg_fn`) whose decay ramps up as
    min(decay, (1 + n) / (10 + n)) after n updates (TensorFlow's ExponentialMovingAverage with
    `num_updates`; timm warms its EMA up alike): a fixed 0.999 would keep a short run's average
    near its random start. The decay is computed on the device, so no step waits for it."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # integer buffers (BatchNorm's batch count)
            torch._foreach_copy_(averaged, current)
            return
        n = n.to(averaged[0].dtype)
        weight = 1 - torch.clamp((1 + n) / (10 + n), max=decay)
        torch._foreach_add_(averaged, torch._foreach_mul(torch._foreach_sub(current, averaged), weight))

    return update


class WeightEMA(WeightAveraging):
    """An EMA of the weights (`--ema-decay`), updated after every optimizer step with the decay
    warmed up (`ema_with_warmup`; Lightning's `EMAWeightAveraging` has a fixed decay), whose
    checkpoints hold the average as `state_dict` and the raw weights beside it. Lightning
    restores the raw weights whenever it loads such a checkpoint while the callback is attached,
    also for `trainer.test(ckpt_path="best")`; here only resuming a fit does, so testing (and
    export, which reads `state_dict`) use the average."""

    def __init__(self, decay: float):
        super().__init__(multi_avg_fn=ema_with_warmup(decay))

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
