"""In-process scoring: threads read and decode batches while ONNX Runtime scores the one before.

A pool of `threads` reads and decodes whole batches (Pillow and file reads release the GIL),
at most `threads + 1` batches ahead, so memory holds a few batches whatever the size of the
data; the main thread runs the session (its own intra-op threads, which do not spin while idle)
and turns its output into the service's answers, and every `part_size` images become one part
of the output, committed whole (`training.scoring.writer`).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from training.scoring.decode import answers, decode_batch
from training.scoring.model import Model, Runner, open_session
from training.scoring.sources import Item, read_blobs
from training.scoring.writer import Output, Problem, columns, part_name


@dataclass
class Counts:
    scored: int = 0
    errors: int = 0
    parts: list[str] = field(default_factory=list)


def batches(items: Sequence[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


class PartBuffer:
    """Answers and errors gathered until a part is full, then committed."""

    def __init__(self, output: Output, model: Model, settings: dict[str, Any], run: str, part_size: int):
        self.output, self.model, self.settings, self.run = output, model, settings, run
        self.part_size = part_size
        self.paths: list[str] = []
        self.sizes: list[tuple[int, int]] = []
        self.results: list[dict] = []
        self.errors: list[Problem] = []
        self.committed: list[str] = []

    def add(self, paths, sizes, results, errors) -> None:
        self.paths += paths
        self.sizes += sizes
        self.results += results
        self.errors += errors
        if len(self.paths) + len(self.errors) >= self.part_size:
            self.flush()

    def flush(self) -> None:
        if not self.paths and not self.errors:
            return
        card = self.model.card
        data = columns(card.task, self.model.name, self.model.version, self.paths, self.sizes, self.results)
        name = part_name(self.run, len(self.committed))
        self.committed.append(self.output.commit(card.task, data, self.errors, self.settings, name))
        self.paths, self.sizes, self.results, self.errors = [], [], [], []


def score_local(model: Model, items: Sequence[Item], output: Output, settings: dict[str, Any], *,
                run: str, batch_size: int, part_size: int, threads: int | None = None,
                progress: Callable[[int, int], None] = lambda scored, errors: None) -> Counts:
    """Score `items` with `model` into `output`; `progress(scored, errors)` after each batch."""
    threads = threads or os.cpu_count() or 1
    card = model.card
    runner = Runner(open_session(model.path, threads))
    buffer = PartBuffer(output, model, settings, run, part_size)
    counts = Counts()

    def load(batch: list[Item]) -> tuple[list[Item], dict]:
        return batch, decode_batch(card, read_blobs(batch))

    with ThreadPoolExecutor(threads, thread_name_prefix="waldo-decode") as pool:
        todo = batches(items, batch_size)
        pending: deque = deque()

        def submit() -> None:
            batch = next(todo, None)
            if batch is not None:
                pending.append(pool.submit(load, batch))

        for _ in range(threads + 1):
            submit()
        while pending:
            batch, decoded = pending.popleft().result()
            submit()
            kept = decoded["kept"]
            out = runner(decoded["x"]) if kept else None
            results = answers(card, out, decoded["sizes"], top_k=settings["top_k"],
                              threshold=settings["threshold"]) if kept else []
            unread = set(decoded["unread"])
            errors = [Problem(batch[i].path, reason, i in unread)
                      for i, reason in sorted(decoded["problems"].items())]
            buffer.add([batch[i].path for i in kept], decoded["sizes"], results, errors)
            counts.scored += len(kept)
            counts.errors += len(errors)
            progress(counts.scored, counts.errors)
    buffer.flush()
    counts.parts = buffer.committed
    return counts


__all__ = ["Counts", "batches", "score_local"]
