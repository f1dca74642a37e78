"""Image folders for the user-data tests: plain images, and the broken files users bring (a
zero-byte file, a truncated JPEG, a text file named .jpg)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE = (220, 30, 30), (30, 30, 220)


def solid(path: Path, color=RED, size=(16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def truncated_jpeg(path: Path) -> Path:
    """A 64x64 JPEG of noise cut after half its bytes: Pillow opens it, decoding it fails."""
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def zero_bytes(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def text_named_jpg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not a picture\n")
    return path


def classes(root: Path, n: int, start: int = 0) -> None:
    """`n` red cats and `n` blue dogs, 16x16 PNGs."""
    for i in range(start, start + n):
        solid(root / "cat" / f"{i:02d}.png", RED)
        solid(root / "dog" / f"{i:02d}.png", BLUE)


COLORS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]  # one class each in photo_folder


def photo_folder(root: Path, per_class: int = 20) -> Path:
    """Three classes of small noisy JPEGs, plus one broken file that training skips."""
    rng = np.random.default_rng(0)
    for c, color in enumerate(COLORS):
        for i in range(per_class):
            pixels = (rng.normal(0, 25, (40, 48, 3)) + color).clip(0, 255).astype(np.uint8)
            (root / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.jpg", quality=90)
    truncated_jpeg(root / "c0" / "broken.jpg")
    return root


def upload_folder(client, root: Path, bucket: str, prefix: str) -> str:
    """Every file under `root` as s3://bucket/prefix/<relative path>; returns that URL."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def box_folder(root: Path, count: int = 30) -> Path:
    """Images with one coloured square each (or nothing), and labels.csv."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    with (root / "labels.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["image", "x", "y", "w", "h", "label"])
        for i in range(count):
            pixels = np.full((60, 80, 3), 30, np.uint8)
            pixels[0, 0] = i % 256  # no two images the same bytes: the empty ones neither
            name = f"img{i}.png"
            if i % 5 == 4:
                out.writerow([name, "", "", "", "", ""])
            else:
                c = i % 3
                x, y, s = int(rng.integers(0, 50)), int(rng.integers(0, 30)), int(rng.integers(10, 30))
                pixels[y:y + s, x:x + s] = COLORS[c]
                out.writerow([name, x, y, s, s, f"k{c}"])
            Image.fromarray(pixels).save(root / name)
    return root
