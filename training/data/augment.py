"""Training-time augmentation of classification data (`--augment`, `--random-erasing`).

Every choice draws its randomness per image. Where it runs:
- `basic` on digits is a small random affine (rotation, shift, scale) applied to the whole batch
  at once on the batch's device, with each image's own matrix (`random_affine`): one
  `grid_sample` per batch instead of a transform call per image, so it costs next to nothing.
- `basic` on photos (random resized crop and horizontal flip), torchvision's policies
  (`trivialaugment`, `randaugment`, `autoaugment`) and random erasing run per image in the
  Dataset (`Augmented`), that is in the DataLoader's worker processes when `--loader-workers`
  is above 0, with torchvision transforms v2 on uint8 tensors.

Localization augments boxes and images together in `training.data.localization`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

# `basic` for digits: the ranges of the usual MNIST augmentation.
AFFINE_DEGREES = 10.0
AFFINE_TRANSLATE = 0.1  # of the image side, each way
AFFINE_SCALE = (0.9, 1.1)
# `basic` for photos: torchvision's reference recipe crops 8%-100% of an ImageNet photo; small
# data sets at 32-64 px keep more of the picture.
CROP_SCALE = (0.35, 1.0)

_POLICIES = {"trivialaugment": v2.TrivialAugmentWide, "randaugment": v2.RandAugment,
             "autoaugment": v2.AutoAugment}


def per_image_transform(augment: str, kind: str, size: int, random_erasing: float = 0.0
                        ) -> v2.Transform | None:
    """The per-image part of a recipe for uint8 (C, size, size) images, or None for nothing."""
    steps: list[v2.Transform] = []
    if augment == "basic" and kind == "photos":
        steps += [v2.RandomResizedCrop(size, scale=CROP_SCALE, antialias=True),
                  v2.RandomHorizontalFlip()]
    elif augment in _POLICIES:
        steps.append(_POLICIES[augment]())
    elif augment not in ("none", "basic"):
        raise ValueError(f"unknown augment {augment!r}; valid: none, basic, {', '.join(_POLICIES)}")
    if random_erasing:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(steps) if steps else None


def batched_affine(augment: str, kind: str) -> bool:
    """Whether the recipe's augmentation is the batched random affine (`random_affine`)."""
    return augment == "basic" and kind == "digits"


def random_affine(x: torch.Tensor, *, degrees: float | None = None,
                  translate: float | None = None,
                  scale: tuple[float, float] | None = None) -> torch.Tensor:
    """Rotate, shift and scale each image of a float batch (B, C, H, W) by its own random
    amounts (default: the AFFINE_* ranges); what moves in from outside is 0 (black, before
    normalization)."""
    degrees = AFFINE_DEGREES if degrees is None else degrees
    translate = AFFINE_TRANSLATE if translate is None else translate
    scale = AFFINE_SCALE if scale is None else scale
    b = x.shape[0]
    rand = torch.rand(b, 4, device=x.device)
    angle = (rand[:, 0] * 2 - 1) * math.radians(degrees)
    zoom = scale[0] + rand[:, 1] * (scale[1] - scale[0])
    shift = (rand[:, 2:] * 2 - 1) * (2 * translate)  # affine_grid's coordinates span [-1, 1]
    # affine_grid maps each output pixel to where it samples the input: the inverse transform.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, -shift[:, 0]], 1),
                         torch.stack([sin, cos, -shift[:, 1]], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Augmented(Dataset):
    """A classification dataset of (uint8 image, label) with `transform` applied per image."""

    def __init__(self, dataset: Dataset, transform: v2.Transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        return self.transform(image), label


__all__ = ["Augmented", "batched_affine", "per_image_transform", "random_affine"]
