"""One inference lifecycle per model, under every front end (the friendly API, Open Inference
Protocol v2 over HTTP and over gRPC).

A request goes through named stages, each timed:

    read    the front end turns its wire format into items (encoded images or float arrays)
    decode  images are decoded and preprocessed from the ModelCard, one at a time, under the
            request's pixel budget and the service's decode slots (`serving.inputs`)
    queue   the request waits in the model's batcher for a batch to form
    infer   ONNX Runtime runs the batch
    encode  the front end writes the outputs in its wire format

Front ends are thin: they parse their wire format, call `Lifecycle.predict`, and encode. The
limits, the error mapping onto `ApiError`, the Prometheus metrics and the v2 statistics all
come from here, so a new front end copies none of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from starlette.concurrency import run_in_threadpool

from httpapi.errors import ApiError
from serving.batching import Batcher, QueueFull, Timing
from serving.inputs import Inputs, Item
from serving.metrics import Metrics
from serving.runtime import LoadedModel
from serving.settings import Settings

# Work this small runs on the event loop: it costs less than the hop to a worker thread and back.
INLINE_PIXELS = 256 * 256  # pixels to decode

STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass
class Statistics:
    """What the Open Inference Protocol's statistics extension reports for one model: counts
    and cumulative nanoseconds per stage, since the service started."""

    stages: dict[str, Duration] = field(default_factory=lambda: {s: Duration() for s in STAGES})
    inference_count: int = 0  # images (batch rows) inferred
    execution_count: int = 0  # ONNX Runtime runs (a batch is one)
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)  # batch size -> runs

    def as_v2(self, name: str, version: str) -> dict:
        return {
            "name": name, "version": version, "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": {s: {"count": d.count, "ns": d.ns} for s, d in self.stages.items()}
            | {"cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}},
            "batch_stats": [{"batch_size": size, "compute_infer": {"count": d.count, "ns": d.ns}}
                            for size, d in sorted(self.batches.items())],
        }


@dataclass
class Trace(Timing):
    """Where one request's time went, stage by stage (ns; the batcher fills in its part). Added
    to the statistics only when the request succeeds, all at once, so that the stage counts
    always agree (perf_analyzer checks that they do)."""

    compute_input: int = 0
    compute_output: int = 0
    rows: int = 0
    # The lifecycle (version) that answers: set when the request starts (routing may pick a
    # rollout's candidate) and changed when a candidate's failure is retried on the primary.
    side: Lifecycle | None = None
    version: str = ""  # the version that computed the answer
    protocol: str = ""  # the front end's, as the metrics label it
    fetch: tuple[str, ...] = ()  # extra outputs the front end asked for (set while reading)


@dataclass
class Prediction:
    """What the model computed for one request: `out` rows in request order."""

    out: np.ndarray
    model: LoadedModel
    sizes: list[tuple[int, int]]  # (width, height) of each input as sent
    x: np.ndarray | None = None  # the batch it was computed from (a shadow candidate gets it too)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # the Trace.fetch outputs


class Lifecycle:
    """The stages of an inference for one served model (`serving.manager.ServedModel` adds
    where the model comes from and how it is reloaded)."""

    def __init__(self, name: str, settings: Settings, metrics: Metrics, decode_slots: asyncio.Semaphore):
        self.name, self.settings, self.metrics = name, settings, metrics
        self.decode_slots = decode_slots  # shared by every model of the service
        self.stats = Statistics()
        self.model: LoadedModel | None = None  # set by the manager on load, None when unloaded
        self.batcher: Batcher | None = None  # started with the first version, kept across reloads
        self.error: str | None = None  # why the last load failed, or why the model is unloaded

    def statistics(self) -> dict:
        """This model's entry of the v2 statistics extension."""
        return self.stats.as_v2(self.name, self.model.version if self.model else "")

    def start_batcher(self, model: LoadedModel, on_depth: Callable[[int], None] = lambda n: None) -> None:
        """Serve `model` through this lifecycle's own batcher (started with the first version;
        a later version replaces the model, and the batch in flight keeps the old one)."""
        self.model = model
        if self.batcher is not None:
            self.batcher.model = model
            return
        s = self.settings
        self.batcher = Batcher(model, max_batch_size=s.max_batch_size, max_delay_s=s.max_delay_ms / 1000,
                               max_queue=s.max_queue, on_batch=self.count_batch, on_depth=on_depth)
        self.batcher.start()

    # -- stages -------------------------------------------------------------------------------
    def loaded(self) -> LoadedModel:
        """The served version, or 503 with why there is none."""
        if self.model is None or self.batcher is None:
            raise ApiError(503, "not_loaded", f"model {self.name!r} is not loaded: {self.error}",
                           headers={"Retry-After": "5"})
        return self.model

    @contextmanager
    def request(self, protocol: str, side: Lifecycle | None = None):
        """Around one request of any front end; yields its Trace. Counts the request by status
        in Prometheus and in the v2 statistics (success with its stages, or fail), on the
        version that answered (`Trace.side`: `side`, else this lifecycle)."""
        started = time.perf_counter_ns()
        trace = Trace(side=side or self, protocol=protocol)
        status = 500
        try:
            yield trace
            status = 200
        except ApiError as exc:
            status = exc.status
            raise
        finally:
            elapsed = time.perf_counter_ns() - started
            answered = trace.side or self
            version = trace.version or answered.version
            self.metrics.requests.labels(self.name, version, str(status), protocol).inc()
            self.metrics.latency.labels(self.name, version, protocol).observe(elapsed / 1e9)
            if status == 200:
                answered._succeeded(trace, elapsed)
            else:
                answered.stats.stages["fail"].add(elapsed)

    @property
    def version(self) -> str:
        """The version this lifecycle serves now ("" while none is loaded)."""
        return self.model.version if self.model is not None else ""

    def _succeeded(self, trace: Trace, elapsed: int) -> None:
        st = self.stats
        st.stages["success"].add(elapsed)
        for stage, ns in (("compute_input", trace.compute_input), ("queue", trace.queue_ns),
                          ("compute_infer", trace.infer_ns), ("compute_output", trace.compute_output)):
            st.stages[stage].add(ns)
        st.inference_count += trace.rows
        st.last_inference_ms = int(time.time() * 1000)

    def check_count(self, n: int) -> None:
        if n > self.settings.max_images:
            raise ApiError(413, "too_many", f"{n} images or instances in one request; the limit is "
                                            f"{self.settings.max_images}")
        if n < 1:
            raise ApiError(422, "invalid_input", "no inputs: send at least one image or tensor")

    async def decode(self, items: list[Item], trace: Trace) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Items -> the (n, C, H, W) float32 batch the card asks for, and each input's size.

        Small work runs on the event loop; large images decode on a worker thread holding one
        of the service's decode slots (`max_concurrent_decodes`), which bounds the memory that
        decoding takes across all requests."""
        s = self.settings
        started = time.perf_counter_ns()
        inputs = Inputs(self.loaded().card, items, max_pixels=s.max_image_pixels,
                        max_request_pixels=s.max_request_pixels)
        self.check_count(inputs.count)
        if inputs.pixels <= INLINE_PIXELS:
            x = inputs.decode()
        else:
            try:
                await asyncio.wait_for(self.decode_slots.acquire(), s.request_timeout_s)
            except TimeoutError:
                raise ApiError(503, "overloaded", f"no decode slot free within {s.request_timeout_s} s; "
                                                  "retry shortly", headers={"Retry-After": "1"}) from None
            try:
                x = await run_in_threadpool(inputs.decode)
            finally:
                self.decode_slots.release()
        trace.compute_input = time.perf_counter_ns() - started
        return x, inputs.sizes

    def enqueue(self, x: np.ndarray, trace: Trace) -> asyncio.Future:
        try:
            return self.batcher.put(x, trace, trace.fetch)
        except QueueFull as exc:
            raise ApiError(503, "overloaded", f"{exc}; retry shortly", headers={"Retry-After": "1"}) from None

    async def wait(self, queued: asyncio.Future, trace: Trace) -> tuple[np.ndarray, LoadedModel]:
        """The request's output rows (with `Trace.fetch`: its outputs by name) and the model
        that computed them; 504 after the request timeout."""
        try:
            out, model = await asyncio.wait_for(queued, self.settings.request_timeout_s)
        except TimeoutError:
            raise ApiError(504, "timeout", f"no result within {self.settings.request_timeout_s} s") from None
        trace.rows += len(out[model.output_name] if isinstance(out, dict) else out)
        return out, model

    def count_batch(self, size: int, ns: int) -> None:
        """Called by the batcher once per ONNX Runtime run."""
        self.stats.batches.setdefault(size, Duration()).add(ns)
        self.stats.execution_count += 1
        self.metrics.batch_size.labels(self.name, self.version).observe(size)

    # -- the whole path -----------------------------------------------------------------------
    async def predict(self, read, trace: Trace) -> Prediction:
        """`await read(card)` gives the request's items (a front end reads and parses its body
        there, so that a batch being formed waits for it); then decode, queue and infer."""
        card = self.loaded().card
        with self.batcher.announce():
            items = await read(card)
            x, sizes = await self.decode(items, trace)
            del items
            queued = self.enqueue(x, trace)
        out, model = await self.wait(queued, trace)
        trace.version = model.version
        if isinstance(out, dict):  # the request asked for extra outputs too
            extras = dict(out)
            return Prediction(extras.pop(model.output_name), model, sizes, x, extras)
        return Prediction(out, model, sizes, x)

    @contextmanager
    def encoding(self, trace: Trace):
        """Around a front end's encode stage."""
        started = time.perf_counter_ns()
        yield
        trace.compute_output = time.perf_counter_ns() - started
