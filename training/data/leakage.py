"""The same image in more than one split, found by content before a run trains.

A test split that holds training images measures memory, not what the network learnt: the
hostile pass trained a network on random noise through a folder whose links repeated every
file, and it scored 97% on the test split. Links are no longer walked twice
(`training.data.links`), but the same image can still reach two splits as a copy, or twice in
a labels CSV. So the user's data sets (`folder`, `packed`, and their localization kin) compare
their splits by the sha256 of each image's bytes when they load (`split_overlap`), and
`training.running.steps.check_split_overlap` refuses a run whose test split shares more than
`MAX_SHARE` of its images with train or val, unless the spec allows it
(`allow_split_overlap`), and records the count on the run. A pack stores its splits' overlap
in its manifest, computed when it was packed.

Hashing reads each file once more, after the image check has decoded it (so mostly from the
page cache), on a few threads (hashlib and file reads release the GIL). bench/leakage_hash.py
measures it against decoding the same files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel

MAX_SHARE = 0.01  # of the test split that may also lie in train or val before a run refuses
EXAMPLES = 2  # pairs of images named in the message

Source = str | Path | bytes  # an image file, or its encoded bytes (a pack's row)


class SplitOverlap(BaseModel):
    """How many images of one split have the same bytes as an image of an earlier split."""

    test: int  # images in the test split
    in_test: int  # of them, those whose bytes are also in train or val
    val: int = 0  # images in the val split (0: the test split is the val split)
    val_in_train: int = 0  # of them, those whose bytes are also in train
    examples: list[tuple[str, str]] = []  # (a test image, the train or val image it equals)

    @property
    def share(self) -> float:
        """The share of the test split that is also in train or val."""
        return self.in_test / self.test if self.test else 0.0

    def describe(self) -> str:
        """One sentence: how many test images are also in train or val, with examples."""
        shown = ", ".join(f"{test!r} = {other!r}" for test, other in self.examples)
        return (f"{self.in_test} of {self.test} test images ({self.share:.1%}) also lie in train "
                f"or val (the same bytes), e.g. {shown}")


def digest(source: Source) -> str:
    """The sha256 of an image file's bytes (or of the bytes given)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return hashlib.sha256(source).hexdigest()
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()  # images: small files


def digests(sources: Sequence[Source], workers: int | None = None) -> list[str | None]:
    """`digest` of each source on a few threads; None for a file that cannot be read (the
    image check skips it anyway)."""

    def one(source: Source) -> str | None:
        try:
            return digest(source)
        except OSError:
            return None

    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    if workers <= 1 or len(sources) < 16:
        return [one(s) for s in sources]
    with ThreadPoolExecutor(workers, thread_name_prefix="waldo-hash") as pool:
        return list(pool.map(one, sources, chunksize=32))


def split_overlap(splits: dict[str, list[tuple[str, Source]]], *,
                  test_is_val: bool = False) -> SplitOverlap:
    """The overlap of `splits` ({"train"|"val"|"test": [(name, source)]}): test against train
    and val, val against train. `test_is_val` says the test split is the val split itself
    (a folder with train/ and val/ only), which is then compared with train alone."""
    compared = [s for s in ("train", "val", "test") if s in splits and not (test_is_val and s == "val")]
    return overlap_of_digests({split: list(zip([name for name, _ in splits[split]],
                                               digests([source for _, source in splits[split]])))
                               for split in compared})


def overlap_of_digests(hashed: dict[str, list[tuple[str, str | None]]]) -> SplitOverlap:
    """`split_overlap` of images already hashed: {split: [(name, sha256 or None)]}; a split
    left out is not compared (the val split, when it is the test split)."""
    first: dict[str, str] = {}  # digest -> the first train (else val) image with those bytes
    for split in ("train", "val"):
        for name, value in hashed.get(split, []):
            if value is not None:
                first.setdefault(value, name)
    train = {value for _, value in hashed.get("train", [])}
    matches = [(name, first[value]) for name, value in hashed.get("test", []) if value in first]
    return SplitOverlap(test=len(hashed.get("test", [])), in_test=len(matches),
                        val=len(hashed.get("val", [])),
                        val_in_train=sum(1 for _, value in hashed.get("val", [])
                                         if value is not None and value in train),
                        examples=matches[:EXAMPLES])


__all__ = ["EXAMPLES", "MAX_SHARE", "SplitOverlap", "digest", "digests", "overlap_of_digests",
           "split_overlap"]
