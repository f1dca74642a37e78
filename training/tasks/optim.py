"""Optimizer and learning-rate schedule from the spec's names, shared by every task.

`cosine`, `step` (every `lr_step_size` epochs) and `none` may start with a linear warmup of
`warmup_epochs` from a hundredth of the learning rate; `onecycle` is torch's OneCycleLR, whose
rise takes `warmup_epochs` (or 30% of the run when that is 0). With a warmup, and for
`onecycle`, the schedule steps with every optimizer step, so it is smooth however few the
epochs; otherwise once per epoch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import lr_scheduler

WARMUP_START = 0.01  # the warmup's first learning rate, as a fraction of the full one
SCHEDULES = ("none", "cosine", "step", "onecycle")


def build_optimizers(
    params: Iterable[torch.nn.Parameter],
    *,
    optimizer: str,
    lr: float,
    weight_decay: float,
    momentum: float,
    lr_schedule: str,
    epochs: int,
    lr_step_size: int,
    lr_gamma: float,
    warmup_epochs: int = 0,
    steps_per_epoch: int = 1,
) -> dict:
    """Return the `configure_optimizers` dict for Lightning (`steps_per_epoch`: optimizer steps)."""
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: adam, adamw, sgd")
    if lr_schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid: {', '.join(SCHEDULES)}")
    # Without a warmup, cosine and step change the rate once per epoch, as torchvision's
    # reference recipes do (a step of the schedule on every batch costs time on the CPU).
    per_epoch = lr_schedule in ("cosine", "step") and not warmup_epochs
    unit = 1 if per_epoch else max(1, steps_per_epoch)  # schedule steps per epoch
    total, warmup = epochs * unit, warmup_epochs * unit
    if lr_schedule == "none" and not warmup:
        return {"optimizer": opt}
    if lr_schedule == "onecycle":
        sched: lr_scheduler.LRScheduler = lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=total, pct_start=warmup / total if warmup else 0.3)
    else:
        main = {"none": lambda: lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0),
                "cosine": lambda: lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - warmup)),
                "step": lambda: lr_scheduler.StepLR(opt, step_size=lr_step_size * unit,
                                                    gamma=lr_gamma)}[lr_schedule]()
        sched = main
        if warmup:
            rise = lr_scheduler.LinearLR(opt, start_factor=WARMUP_START, total_iters=warmup)
            sched = lr_scheduler.SequentialLR(opt, [rise, main], milestones=[warmup])
    interval = "epoch" if per_epoch else "step"
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}


def add_to_schedules(group: dict, schedulers: Iterable[lr_scheduler.LRScheduler]) -> None:
    """Let the schedules drive a param group added during training (a backbone unfrozen by
    `training.running.finetune`): the per-group keys they keep (initial, peak and final learning rates,
    OneCycleLR's momenta) and their base learning rates, copied from the first group and
    scaled by the ratio of the two groups' current learning rates."""
    for sched in schedulers:
        for s in [sched, *getattr(sched, "_schedulers", [])]:
            first = s.optimizer.param_groups[0]
            scale = group["lr"] / first["lr"] if first["lr"] else 1.0
            for key, value in first.items():
                if key not in group:
                    group[key] = value * scale if key in ("initial_lr", "max_lr", "min_lr") else value
            group.setdefault("initial_lr", group["lr"])
            if len(s.base_lrs) < len(s.optimizer.param_groups):
                s.base_lrs.append(group["initial_lr"])
