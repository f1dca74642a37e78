"""What the leakage guard's hashing costs: the sha256 of every image file
(`training.data.leakage.digests`, as a `folder` data set computes it when it loads) against the
decode check every image gets anyway (`training.data.images.check_images`), on the same files.

Writes two folders into a temporary directory: `--small` PNGs of 32x32 (noise, so that they
do not compress away) and `--large` JPEGs of 640x480 photos-like noise, then times each step
`--repeats` times on each folder and prints the median, per image and in total, with the load
average before and after. The files were just written, so they are read from the page cache,
as they are at load time, after the image check has read them.

    .venv/bin/python bench/leakage_hash.py                 # 5,000 small PNGs, 500 large JPEGs
    .venv/bin/python bench/leakage_hash.py --small 20000 --large 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_images(folder: Path, count: int, size: tuple[int, int], suffix: str) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        h, w = size
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        pixels = np.repeat(np.repeat(base, 8, 0), 8, 1)[:h, :w]  # blocks: photo-sized JPEGs
        pixels = (pixels + rng.integers(0, 16, pixels.shape, dtype=np.uint8)).astype(np.uint8)
        path = folder / f"{i:05d}{suffix}"
        Image.fromarray(pixels).save(path, **({"quality": 90} if suffix == ".jpg" else {}))
        paths.append(path)
    return paths


def timed(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=5000, help="32x32 PNGs")
    parser.add_argument("--large", type=int, default=500, help="640x480 JPEGs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from training.data.images import check_images
    from training.data.leakage import digests

    root = Path(tempfile.mkdtemp(prefix="waldo-leakage-"))
    try:
        sets = {"32x32 PNG": write_images(root / "small", args.small, (32, 32), ".png"),
                "640x480 JPEG": write_images(root / "large", args.large, (480, 640), ".jpg")}
        load = os.getloadavg()
        print(f"{os.cpu_count()} CPUs; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"{'images':>14} {'count':>6} {'MB':>7} {'hash s':>8} {'us/img':>7} "
              f"{'decode s':>9} {'us/img':>7} {'hash/decode':>12}")
        for name, paths in sets.items():
            megabytes = sum(p.stat().st_size for p in paths) / 1e6
            hashing = timed(lambda paths=paths: digests(paths), args.repeats)
            decoding = timed(lambda paths=paths: check_images(paths), args.repeats)
            n = len(paths)
            print(f"{name:>14} {n:>6} {megabytes:>7.1f} {hashing:>8.3f} {1e6 * hashing / n:>7.0f} "
                  f"{decoding:>9.3f} {1e6 * decoding / n:>7.0f} {hashing / decoding:>11.1%}")
        load = os.getloadavg()
        print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
