"""Optimizer and LR schedule from the spec's names, shared by every task."""

from __future__ import annotations

from collections.abc import Iterable

import torch


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
) -> dict:
    """Return the `configure_optimizers` dict for Lightning."""
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: adam, adamw, sgd")
    if lr_schedule == "none":
        return {"optimizer": opt}
    if lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    elif lr_schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=lr_step_size, gamma=lr_gamma)
    else:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid: none, cosine, step")
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
