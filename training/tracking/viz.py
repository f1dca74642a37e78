"""Plots logged with runs: learning curves, confusion matrix, comparisons, boxes per epoch.

What the network looks at (filters, feature maps, Grad-CAM) is drawn by
`training.tracking.explain`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchmetrics.utilities.plot import plot_confusion_matrix  # noqa: E402
from torchvision.ops import box_convert  # noqa: E402
from torchvision.utils import draw_bounding_boxes, make_grid  # noqa: E402


def learning_curves(history: Mapping[str, Sequence[float]], loss_name: str = "loss"):
    """Per epoch: train and validation loss on the left, every other metric on the right."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, values in history.items():
        if values:
            ax = left if key.endswith("_loss") else right
            ax.plot(range(1, len(values) + 1), values, marker=".", label=key)
    left.set_ylabel(loss_name)
    right.set_ylabel("metric")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
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


def box_grid(
    images: torch.Tensor, target: torch.Tensor, pred: torch.Tensor, *,
    mean: Sequence[float], std: Sequence[float], labels: Sequence[str], threshold: float = 0.5,
    scale: int = 2,
) -> torch.Tensor:
    """Normalized images (B, C, H, W) with true boxes (green, "label") and predicted boxes
    (red, "label p_c") drawn on them, as one (3, H', W') grid in [0, 1]."""
    m = torch.tensor(list(mean)).view(1, -1, 1, 1)
    s = torch.tensor(list(std)).view(1, -1, 1, 1)
    pixels = ((images * s + m).clamp(0, 1) * 255).to(torch.uint8)
    if scale > 1:
        pixels = torch.nn.functional.interpolate(pixels.float(), scale_factor=scale).to(torch.uint8)
    h, w = pixels.shape[-2:]
    size = torch.tensor([w, h, w, h], dtype=torch.float32)
    drawn = []
    for img, t, p in zip(pixels, target, pred):
        img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
        boxes, names, colors = [], [], []
        if t[0] > 0.5:
            boxes.append(t[1:5] * size)
            names.append(labels[int(t[5:].argmax())])
            colors.append("lime")
        if p[0] >= threshold:
            boxes.append(p[1:5].clamp(0, 1) * size)
            names.append(f"{labels[int(p[5:].argmax())]} {float(p[0]):.2f}")
            colors.append("red")
        if boxes:
            xyxy = box_convert(torch.stack(boxes), "xywh", "xyxy")
            img = draw_bounding_boxes(img, xyxy, labels=names, colors=colors, width=1)
        drawn.append(img)
    return make_grid(torch.stack(drawn).float() / 255, nrow=4, padding=2, pad_value=1.0)
