"""Pictures logged with every run: learning curves, confusion matrix, first-layer filters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchmetrics.utilities.plot import plot_confusion_matrix  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402


def learning_curves(history: Mapping[str, Sequence[float]]):
    """Loss and accuracy per epoch, train against validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ["loss", "acc"]):
        for split in ["train", "val"]:
            values = history.get(f"{split}_{metric}", [])
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel({"loss": "cross-entropy", "acc": "accuracy"}[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(counts: torch.Tensor, labels: Sequence[str]):
    """Test-set confusion matrix (rows: true class, columns: predicted)."""
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(labels), 1 + 0.6 * len(labels)))
    plot_confusion_matrix(counts, ax=ax, labels=list(labels))
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    return fig


def first_conv(net: nn.Module) -> nn.Conv2d | None:
    return next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)


def filter_grid(net: nn.Module, scale: int = 8) -> torch.Tensor | None:
    """The first conv layer's filters as one image grid (3, H, W) in [0, 1], or None.

    Each filter is min-max scaled on its own so that its pattern (edge, blob, stroke) shows.
    RGB filters are shown in colour; other channel counts as the mean over input channels.
    """
    conv = first_conv(net)
    if conv is None:
        return None
    w = conv.weight.detach().float().cpu()  # (out, in, k, k)
    if w.shape[1] != 3:
        w = w.mean(dim=1, keepdim=True)
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    w = (w - lo) / (hi - lo).clamp_min(1e-8)
    w = torch.nn.functional.interpolate(w, scale_factor=scale, mode="nearest")
    return make_grid(w, nrow=min(8, w.shape[0]), padding=2, pad_value=1.0)


def compare_curves(curves: Mapping[str, Sequence[float]], metric: str = "val_acc"):
    """One line per run: `metric` per epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
