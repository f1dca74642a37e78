"""Encoded images -> the model's input batch, and its output -> answers: the service's own steps.

Decoding follows `serving.inputs` (the formats it opens; JPEGs decoded at the smallest 1/2, 1/4
or 1/8 scale that still covers the input, Pillow's draft mode), and the tensor and the answers
come from `serving.processing.preprocess` and `postprocess` with the model's ModelCard, so an
image scored here gets the service's answer (tests/integration/test_batch_predict.py compares
them). An image that cannot be read or decoded gets the reason instead, as the service's 400
would say it, and the rest of its batch goes on.

Ray Data's decode tasks import this module: it needs numpy and Pillow only.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.modelcard import ModelCard
from serving.processing import postprocess, preprocess

# serving.inputs.IMAGE_FORMATS: the formats the service opens (that module is the HTTP layer's).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")


class Unreadable(Exception):
    """An image that cannot be scored; the message says why."""


def decode(card: ModelCard, blob: bytes) -> tuple[np.ndarray, tuple[int, int]]:
    """One encoded image -> (C, H, W) float32 as the card says, and its (width, height)."""
    if not blob:
        raise Unreadable("empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(blob), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise Unreadable(f"not an image in a known format ({', '.join(IMAGE_FORMATS)})") from None
    except Image.DecompressionBombError:
        raise Unreadable("declares too many pixels") from None
    except Exception as exc:  # a broken header: Pillow raises OSError, SyntaxError, ValueError...
        raise Unreadable(f"cannot be decoded: {_line(exc)}") from None
    with image:
        size = image.size
        if size[0] < 1 or size[1] < 1:
            raise Unreadable(f"has size {size[0]}x{size[1]}")
        if image.format == "JPEG":  # as the service: decode no larger than the input needs
            spec = card.input
            image.draft(image.mode if image.mode in ("L", "RGB") else None, (spec.width, spec.height))
        try:
            image.load()
            return preprocess(card, image), size
        except Exception as exc:  # truncated data, corrupt chunks, modes that do not convert
            raise Unreadable(f"cannot be decoded: {_line(exc)}") from None


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def decode_batch(card: ModelCard, blobs: list[bytes | str]) -> dict[str, Any]:
    """Encoded images (or, as text, why they could not be read) -> `x` (n, C, H, W) of those
    that decode, `kept` (their positions in `blobs`), `sizes` (width, height of each kept one),
    `problems` ({position: reason} of the others) and `unread` (the positions of those that
    could not be read, which a later run tries again: a lost connection, an expired credential
    or a file that comes back must not make an image unreadable for good)."""
    rows, kept, sizes, problems, unread = [], [], [], {}, []
    for i, blob in enumerate(blobs):
        if isinstance(blob, str):
            problems[i] = blob
            unread.append(i)
            continue
        try:
            x, size = decode(card, blob)
        except Unreadable as exc:
            problems[i] = str(exc)
            continue
        rows.append(x)
        kept.append(i)
        sizes.append(size)
    spec = card.input
    x = (np.stack(rows) if rows
         else np.zeros((0, spec.channels, spec.height, spec.width), dtype=np.float32))
    return {"x": x, "kept": kept, "sizes": sizes, "problems": problems, "unread": unread}


def answers(card: ModelCard, out: np.ndarray, sizes: list[tuple[int, int]], *, top_k: int,
            threshold: float) -> list[dict[str, Any]]:
    """The network's output for a batch -> the service's answer for each image."""
    return postprocess(card, out, sizes, top_k=top_k, threshold=threshold)


__all__ = ["IMAGE_FORMATS", "Unreadable", "answers", "decode", "decode_batch"]
