"""Pre- and post-processing from a ModelCard, in numpy and Pillow only.

Written once and used by both `waldo predict` and the HTTP service, so a prediction means the
same thing everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from serving.modelcard import ModelCard

# 16-bit (and 32-bit integer) greyscale: 0..65535 scaled to 0..255; `convert` would clip it.
WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def preprocess(card: ModelCard, image: Image.Image) -> np.ndarray:
    """One image -> float32 array (C, H, W) as the card says: mode, resize, scale, normalize."""
    spec = card.input
    mode = "L" if spec.channels == 1 else "RGB"
    if image.mode in WIDE_GREY:  # as training reads them (training.data.images.to_mode)
        wide = np.asarray(image, dtype=np.int64).clip(0, 65535)
        image = Image.fromarray(((wide + 128) // 257).astype(np.uint8))
    if image.mode != mode:  # convert() copies even when the mode is already right
        image = image.convert(mode)
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    x = np.asarray(image, dtype=np.float32) * spec.scale
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)  # (C, H, W)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return (x - mean) / std


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def postprocess(
    card: ModelCard,
    output: np.ndarray,
    image_sizes: list[tuple[int, int]],
    *,
    top_k: int = 3,
    threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """Network output (B, ...) -> one result per image.

    `image_sizes` are the original (width, height) of each image, so that boxes come back in
    its pixels. Classification returns the top-k labels with probabilities; localization
    returns p_c, whether that reaches `threshold`, the class, and the box (x, y = top-left).
    """
    if len(output) != len(image_sizes):
        raise ValueError(f"{len(output)} outputs for {len(image_sizes)} images")
    labels = card.labels
    results = []
    if card.task == "classify":
        probs = softmax(output.astype(np.float64))
        for p in probs:
            order = np.argsort(-p)[: min(top_k, len(labels))]
            top = [{"label": labels[i], "probability": float(p[i])} for i in order]
            results.append({"label": top[0]["label"], "probability": top[0]["probability"],
                            "top_k": top})
        return results
    for y, (width, height) in zip(output, image_sizes):
        p_c = float(y[0])
        x0, y0, w, h = (float(v) for v in np.clip(y[1:5], 0.0, 1.0))
        k = int(np.argmax(y[5:]))
        results.append({
            "p_c": p_c,
            "object": p_c >= threshold,
            "label": labels[k],
            "probability": float(y[5 + k]),
            "box": {"x": x0 * width, "y": y0 * height, "w": w * width, "h": h * height},
        })
    return results
