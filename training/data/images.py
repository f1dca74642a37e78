"""The user's image files: a check before training that each one decodes, and a loader that
turns any readable mode into the data module's channels.

A data set of the user's own files is often partly broken: a zero-byte file, a JPEG cut short
by a failed copy, a text file named `.jpg`. Left to the data loader, such a file crashes
training mid-epoch (a truncated JPEG with a traceback that names no file), or only after every
epoch when it sits in `test/`. So every file is decoded once before training starts; the
unreadable ones are skipped with one warning line each (logger `waldo.data`) and a summary,
and a class that has lost more than half of its images stops the run with one line instead.

The check costs little: JPEGs decode at 1/8 scale (`Image.draft`), which still reads every
entropy-coded byte and so still catches truncation (`Image.verify()` does not, for JPEG);
other formats decode fully. Pillow releases the GIL while it reads and decodes, so a few
threads share the work. Measured on 2 busy cores: 2,000 JPEGs of 32x32 in 0.15-0.3 s, 2,000
of 256x256 noise (the costliest JPEGs to decode) in 0.65-0.9 s, 640x480 photos at about 0.3 ms
each; one thread instead of four took up to 1.5 times as long on the larger images.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from training.errors import WaldoError

log = logging.getLogger("waldo.data")

# 16-bit and 32-bit integer greyscale: scaled from 0..65535 to 0..255 (65535 / 257 = 255).
_WIDE_GREY = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


@dataclass(frozen=True)
class ImageCheck:
    """What decoding one file found: its size (width, height), or why it cannot be read."""

    size: tuple[int, int] | None
    problem: str | None = None


def check_image(source: str | Path | bytes, mode: str = "RGB") -> ImageCheck:
    """Open and fully decode `source`, a file or its bytes (JPEGs at reduced size), and
    convert it to `mode`, as training will; never raises for a bad file."""
    try:
        encoded = isinstance(source, bytes | bytearray | memoryview)
        if (len(source) if encoded else os.path.getsize(source)) == 0:
            return ImageCheck(None, "empty file (0 bytes)")
        with Image.open(open_source(source)) as image:
            size = image.size
            if image.format == "JPEG":  # decode at 1/8 scale: cheaper, still reads every byte
                image.draft(image.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            image.load()
            try:
                to_mode(image, mode)
            except ValueError:
                return ImageCheck(None, f"its mode {image.mode} cannot be converted to {mode}")
        return ImageCheck(size)
    except UnidentifiedImageError:
        return ImageCheck(None, "not an image Pillow can read")
    except Exception as exc:  # a broken file can fail in any of Pillow's decoders, any way
        reason = str(exc).replace("\n", " ") or type(exc).__name__
        return ImageCheck(None, f"cannot decode: {reason}")


def check_images(paths: Sequence[str | Path], mode: str = "RGB",
                 workers: int | None = None) -> dict[str, ImageCheck]:
    """`check_image` for each distinct path, on a few threads: {path: check}, in order."""
    unique = list(dict.fromkeys(str(p) for p in paths))
    workers = workers or min(8, 2 * (os.cpu_count() or 1))  # threads also wait on reads
    if workers <= 1 or len(unique) < 16:
        return {p: check_image(p, mode) for p in unique}
    with ThreadPoolExecutor(workers, thread_name_prefix="waldo-check") as pool:
        return dict(zip(unique, pool.map(check_image, unique, [mode] * len(unique), chunksize=32)))


def skip_unreadable(paths: Sequence[str | Path], groups: Sequence[str], *, where: str | Path,
                    mode: str = "RGB", checks: dict[str, ImageCheck] | None = None,
                    ) -> tuple[list[bool], list[str]]:
    """Check every image of one data set (or split) before training.

    `groups[i]` names the group of `paths[i]` for the messages, e.g. "class 'cat'"; `checks`
    are `check_images(paths, mode)` when the caller has them already. Each unreadable file
    gets one warning line that names it and why, then one summary line follows. Returns
    (whether each entry is readable; the unreadable paths). Raises WaldoError when more than
    half of any group is unreadable: what is left of it would not stand for the class.
    """
    checks = checks if checks is not None else check_images(paths, mode)
    readable = [checks[str(p)].problem is None for p in paths]
    skipped = [p for p, c in checks.items() if c.problem is not None]
    if not skipped:
        return readable, skipped
    for p in skipped:
        log.warning("skipping unreadable image %r: %s", p, checks[p].problem)
    log.warning("skipped %d of %d images in %r that could not be read", len(skipped),
                len(checks), str(where))
    total = Counter(groups)
    bad = Counter(g for g, ok in zip(groups, readable) if not ok)
    lost = [f"{g} ({bad[g]} of {total[g]})" for g in sorted(bad) if 2 * bad[g] > total[g]]
    if lost:
        raise WaldoError(f"more than half of the images are unreadable for {', '.join(lost)} "
                         f"in {str(where)!r}; fix or remove those files (each is named in a "
                         "warning above)")
    return readable, skipped


def to_mode(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """`image` in `mode` ("RGB" or "L"), with sensible values for the modes Pillow's own
    `convert` gets wrong or warns about.

    - 16-bit greyscale (I;16 and its byte orders; also I, 32-bit integers, which older Pillow
      and some TIFFs use for it) is scaled from 0..65535 to 0..255 (divided by 257); `convert`
      clips it instead, so every pixel above 255 came out white.
    - Alpha (RGBA, LA, PA, and palettes with a transparent colour) is dropped, not composited:
      the colour under the alpha stays, as in `serving.processing.preprocess` (a plain
      `convert`), so a model sees the same pixels in training and in serving.
    - CMYK, palettes and the rest go through `convert`.
    """
    if image.mode in _WIDE_GREY:
        wide = np.asarray(image, dtype=np.int64).clip(0, 65535)
        image = Image.fromarray(((wide + 128) // 257).astype(np.uint8))  # (H, W) uint8: L
    elif image.mode in ("P", "PA"):
        # A transparent palette entry is alpha; converting through RGBA keeps Pillow quiet.
        image = image.convert("RGBA")
    if image.mode == mode:
        return image.copy()  # not the file's own (possibly memory-mapped) pixels
    return image.convert(mode)


def open_source(source: str | Path | bytes):
    """What `Image.open` takes for a record's image: its file, or its encoded bytes (a pack)."""
    return io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source


def load_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """Read `path` as a decoded image in `mode` (an ImageFolder loader); see `to_mode`."""
    with Image.open(path) as image:
        image.load()
        return to_mode(image, mode)
