"""`waldo predict`: a checkpoint plus image files -> predictions.

Pre- and post-processing come from `serving.processing`, driven by the ModelCard that export
would write for the checkpoint (`training.export.card.build_card`), so a prediction here means
exactly what the HTTP service will answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from serving.modelcard import ModelCard
from serving.processing import postprocess, preprocess
from training.errors import WaldoError
from training.export.card import build_card
from training.export.source import read_record
from training.tasks import load_task_file


def read_images(card: ModelCard, images: list[str | Path]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The images as the card's input batch (B, C, H, W) and their (width, height); a missing
    or unreadable file is a one-line WaldoError."""
    arrays, sizes = [], []
    for name in images:
        try:
            with Image.open(name) as image:
                sizes.append(image.size)
                arrays.append(preprocess(card, image))
        except (FileNotFoundError, IsADirectoryError):
            raise WaldoError(f"image {str(name)!r} does not exist") from None
        except UnidentifiedImageError:
            raise WaldoError(f"{str(name)!r} is not an image Pillow can read (PNG, JPEG, ...)") from None
    return np.stack(arrays), sizes


def predict(checkpoint: str | Path, images: list[str | Path], *, top_k: int = 3,
            threshold: float = 0.5) -> list[dict[str, Any]]:
    task = load_task_file(checkpoint)
    task.eval()
    card = build_card(read_record(checkpoint))
    batch, sizes = read_images(card, images)
    with torch.inference_mode():
        output = task(torch.from_numpy(batch))
    results = postprocess(card, output.float().numpy(), sizes, top_k=top_k, threshold=threshold)
    return [{"image": str(name), **r} for name, r in zip(images, results)]
