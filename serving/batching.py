"""Dynamic batching: concurrent requests for one model coalesce into one ONNX Runtime run.

LitServe's lifecycle, on asyncio: requests wait in a bounded queue; a single loop per model
takes the first, gathers more until `max_batch_size` images or `max_delay` seconds, runs the
batch on a dedicated thread and hands each request its rows. While a batch runs, the next one
fills, so under load batches grow by themselves and idle latency stays at one run.

The model is read once per batch, so swapping `Batcher.model` (a reload) lets the batch in
flight finish on the old session and sends the next batch to the new one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from serving.runtime import LoadedModel


class QueueFull(Exception):
    """The model's queue is at `max_queue`: the caller should retry later (503)."""


@dataclass
class Timing:
    """Where one request's time went inside the batcher (the v2 statistics report it)."""

    queue_ns: int = 0  # from put() to its batch starting
    infer_ns: int = 0  # its batch's ONNX Runtime run
    batch_size: int = 0  # images in that batch


@dataclass
class _Request:
    x: np.ndarray  # (n, C, H, W)
    future: asyncio.Future
    timing: Timing | None = None
    queued_ns: int = 0
    fetch: tuple[str, ...] = ()  # extra outputs: such a request runs in a batch of its own


class Batcher:
    def __init__(self, model: LoadedModel, *, max_batch_size: int, max_delay_s: float, max_queue: int,
                 on_batch: Callable[[int, int], None] = lambda size, ns: None,
                 on_depth: Callable[[int], None] = lambda n: None):
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=max_queue)
        self._carry: _Request | None = None  # did not fit in the previous batch
        # Requests being decoded that will be submitted soon: a batch waits for them (up to
        # max_delay_s), but a lone request with nothing on its way runs at once.
        self.arriving = 0
        self._on_batch, self._on_depth = on_batch, on_depth
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"ort-{model.name}")
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize() + (self._carry is not None)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.model.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    @contextmanager
    def announce(self):
        """Around decoding a request that will be submitted: batches wait for it."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    def put(self, x: np.ndarray, timing: Timing | None = None,
            fetch: tuple[str, ...] = ()) -> asyncio.Future:
        """Queue `x` (n, C, H, W) now; the future gets its n output rows and the model that
        computed them, and `timing` (if given) where the time went. Cancelling the future (a
        timeout) drops the request from its batch. With `fetch` (extra outputs to return), the
        request runs alone and gets `{output name: array}`, the prediction's included."""
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Request(x, future, timing, time.perf_counter_ns(), fetch))
        except asyncio.QueueFull:
            raise QueueFull(f"{self._queue.maxsize} requests already waiting for {self.model.name}") from None
        self._on_depth(self.depth)
        return future

    async def submit(self, x: np.ndarray) -> tuple[np.ndarray, LoadedModel]:
        return await self.put(x)

    async def _next_batch(self) -> list[_Request]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, size = [first], len(first.x)
        deadline = time.monotonic() + self.max_delay_s
        while size < self.max_batch_size and not first.fetch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if self.arriving <= 0:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item.future.done():  # timed out while waiting
                continue
            if item.fetch or size + len(item.x) > self.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            size += len(item.x)
        return [r for r in batch if not r.future.done()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self._on_depth(self.depth)
            if not batch:
                continue
            model = self.model  # one model per batch: a reload takes effect at the next batch
            x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
            fetch = batch[0].fetch  # a request with extra outputs is a batch of its own
            started = time.perf_counter_ns()
            try:
                if fetch:
                    out = await loop.run_in_executor(self._executor, model.run_outputs, x, fetch)
                    rows = len(out[model.output_name])
                else:
                    out = await loop.run_in_executor(self._executor, model.run, x)
                    rows = len(out)
                if rows != len(x):
                    raise RuntimeError(f"{model.name} returned {rows} rows for a batch of {len(x)}")
            except Exception as exc:
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            infer_ns = time.perf_counter_ns() - started
            self._on_batch(len(x), infer_ns)
            start = 0
            for r in batch:
                stop = start + len(r.x)
                if r.timing is not None:
                    r.timing.queue_ns, r.timing.infer_ns = started - r.queued_ns, infer_ns
                    r.timing.batch_size = len(x)
                if not r.future.done():
                    r.future.set_result((out if fetch else out[start:stop], model))
                start = stop
