"""Losses for single-object localization.

The target and prediction vectors are laid out as y = [p_c, x, y, w, h, p_1 ... p_K]:
p_c is the probability that an object is present, (x, y) the top-left corner of its box and
(w, h) its size, all as fractions of the image width and height, and p_k the (one-hot, for
targets) class probabilities. When p_c = 0 the rest of the target does not matter.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction {reduction!r}; valid: mean, sum, none")


def localization_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    reduction: Literal["mean", "sum", "none"] = "mean",
    variant: Literal["mse", "ce"] = "mse",
    box_loss: Literal["smooth_l1", "giou"] = "smooth_l1",
) -> torch.Tensor:
    """The source's squared-error localization loss, or its cross-entropy variant.

    `pred` comes after its activations: p_c and the class probabilities in [0, 1], the box
    normalized to the image. Both tensors are (B, 5 + K).

    variant="mse": L = (p̂_c - p_c)² if p_c = 0, else Σ_i (ŷ_i - y_i)² over all 5 + K terms.
    variant="ce":  binary cross-entropy on p_c, plus, only when an object is present,
                   cross-entropy on the class and a box loss (smooth L1 on (x, y, w, h), or
                   GIoU from torchvision.ops).
    Terms that a sample does not use contribute no gradient (they are selected out, not
    multiplied by zero, so even NaN or inf "don't care" targets are safe).
    """
    if pred.shape != target.shape or pred.ndim != 2 or pred.shape[1] < 6:
        raise ValueError(f"pred and target must both be (B, 5+K) with K >= 1; got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    present = target[:, 0] > 0.5  # (B,)
    zeros = torch.zeros((), dtype=pred.dtype, device=pred.device)
    # Blank the don't-care slots of empty samples, so that junk there (NaN, inf) cannot reach
    # the value or, through 0 * inf in the backward pass, the gradient.
    target = torch.cat([target[:, :1], torch.where(present[:, None], target[:, 1:], zeros)], dim=1)
    if variant == "mse":
        objectness = (pred[:, 0] - target[:, 0]) ** 2
        rest = ((pred[:, 1:] - target[:, 1:]) ** 2).sum(dim=1)
        return _reduce(objectness + torch.where(present, rest, zeros), reduction)
    if variant != "ce":
        raise ValueError(f"unknown variant {variant!r}; valid: mse, ce")

    objectness = F.binary_cross_entropy(pred[:, 0].clamp(0, 1), target[:, 0], reduction="none")
    safe_target = target
    class_index = safe_target[:, 5:].argmax(dim=1)
    log_probs = pred[:, 5:].clamp_min(1e-7).log()
    cls = F.nll_loss(log_probs, class_index, reduction="none")
    if box_loss == "giou":
        to_xyxy = lambda b: box_convert(b, "xywh", "xyxy")  # noqa: E731
        box = generalized_box_iou_loss(to_xyxy(pred[:, 1:5]), to_xyxy(safe_target[:, 1:5]),
                                       reduction="none")
    elif box_loss == "smooth_l1":
        box = F.smooth_l1_loss(pred[:, 1:5], safe_target[:, 1:5], reduction="none", beta=0.05).sum(1)
    else:
        raise ValueError(f"unknown box_loss {box_loss!r}; valid: smooth_l1, giou")
    return _reduce(objectness + torch.where(present, cls + box, zeros), reduction)
