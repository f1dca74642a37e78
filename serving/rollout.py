"""Rollouts: a candidate version served beside the alias's holder, by the registry's policy.

The policy (`serving.registry.policy.RolloutPolicy`) says how the candidate gets traffic:

- *canary*: `percent` of requests go to the candidate. A request carrying the policy's
  `key_header` always goes to the same version (a hash of the key decides), so one client sees
  one model; a candidate's failure (an exception or a non-finite output) is retried on the
  primary, so the client still gets an answer.
- *shadow*: `percent` of requests are also sent to the candidate after the primary answered;
  the client only ever sees the primary. Top-1 agreement (and box IoU for localization) and the
  candidate's latency are recorded.

The `Monitor` judges the candidate against the primary over windows of `window_s` seconds:
errors (an exception or a non-finite output) as soon as the window holds `min_requests`
candidate requests, latency (p99 of the time in the queue and ONNX Runtime, what differs
between two versions) when the window closes. Past a bound the candidate gets no more traffic
at once, one line is logged and the policy is ended as rolled back in the registry (on a
thread), which records it in the alias's history; every replica then stops too.

Routing, the monitor and the agreement are plain functions and classes (unit tested); the
`Rollout` ties them to a loaded candidate.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from httpapi.errors import ApiError
from serving.lifecycle import Lifecycle, Prediction, Trace
from serving.registry.policy import RolloutSettings
from serving.runtime import LoadedModel

log = logging.getLogger("waldo.serving")

_POLICY = RolloutSettings.model_fields  # the bounds' defaults

BUCKETS = 10_000  # a key's hash picks one of these; the candidate takes percent * 100 of them


# -- routing --------------------------------------------------------------------------------
def key_bucket(key: str, salt: str) -> int:
    """A stable bucket in [0, BUCKETS) for a request key: the same on every replica and restart
    (blake2b, not Python's salted hash). The salt (the candidate) draws a new cohort per rollout."""
    digest = hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class Router:
    """Which requests the candidate gets: `percent` of them; a keyed request by its key's bucket
    (sticky), an unkeyed one at random."""

    def __init__(self, percent: float, salt: str, rng: random.Random | None = None):
        self.percent, self.salt = percent, salt
        self.rng = rng or random.Random()

    def chosen(self, key: str | None = None) -> bool:
        if self.percent <= 0:
            return False
        if key:
            return key_bucket(key, self.salt) < self.percent * BUCKETS / 100
        return self.rng.random() * 100 < self.percent


# -- agreement ------------------------------------------------------------------------------
def top1(task: str, out: np.ndarray) -> np.ndarray:
    """Each row's predicted class: the logits' argmax (classify) or the class probabilities'
    after [p_c, x, y, w, h] (localize)."""
    return np.argmax(out if task == "classify" else out[:, 5:], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU per row of two (n, 4) arrays of boxes [x, y, w, h] (top-left corner and size)."""
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    w = np.clip(np.minimum(ax2, bx2) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(ay2, by2) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    union = np.clip(a[:, 2] * a[:, 3], 0, None) + np.clip(b[:, 2] * b[:, 3], 0, None) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)


@dataclass
class Agreement:
    """How a shadow candidate's rows compare with the primary's."""

    rows: int
    agreeing: int  # same top-1 class
    iou: list[float]  # box IoU per row (localization), else empty


def compare(task: str, primary: np.ndarray, candidate: np.ndarray) -> Agreement:
    agreeing = int((top1(task, primary) == top1(task, candidate)).sum())
    iou = box_iou(primary[:, 1:5], candidate[:, 1:5]).tolist() if task == "localize" else []
    return Agreement(len(primary), agreeing, iou)


def convert_input(x: np.ndarray, source, target) -> np.ndarray:
    """A batch preprocessed for one card's input spec (`source`: scale, mean, std per channel)
    as the other (`target`) would have preprocessed the same pixels: a shadow candidate gets
    the primary's decoded batch without decoding it again."""
    if (source.scale, source.mean, source.std) == (target.scale, target.mean, target.std):
        return x
    pixels = (x * _per_channel(source.std) + _per_channel(source.mean)) / source.scale
    return ((pixels * target.scale - _per_channel(target.mean)) / _per_channel(target.std)).astype(np.float32)


def _per_channel(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(1, -1, 1, 1)


# -- the monitor ----------------------------------------------------------------------------
@dataclass
class Bounds:
    """What a candidate must keep to over a window: the policy's fields of the same names, with
    their defaults (`serving.registry.policy.RolloutSettings` states them once)."""

    window_s: float = _POLICY["window_s"].default
    min_requests: int = _POLICY["min_requests"].default
    min_success_rate: float = _POLICY["min_success_rate"].default
    max_error_rate_increase: float = _POLICY["max_error_rate_increase"].default
    max_p99_ms: float = _POLICY["max_p99_ms"].default
    max_p99_ratio: float = _POLICY["max_p99_ratio"].default

    @classmethod
    def of(cls, policy) -> Bounds:
        return cls(**{name: getattr(policy, name) for name in cls.__dataclass_fields__})


@dataclass
class Window:
    """One side's requests in the current window: how many, how many failed, the latencies (s)
    of those that succeeded."""

    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99(self) -> float | None:
        return float(np.percentile(self.latencies, 99)) if self.latencies else None


class Monitor:
    """Candidate against primary, window by window; `record` returns why the candidate must be
    rolled back (one line), or None."""

    def __init__(self, bounds: Bounds, clock: Callable[[], float] = time.monotonic):
        self.bounds, self.clock = bounds, clock
        self.started = clock()
        self.primary, self.candidate = Window(), Window()

    def record(self, candidate: bool, ok: bool, latency_s: float | None = None) -> str | None:
        verdict = None
        if self.clock() - self.started >= self.bounds.window_s:  # the window closes: judge it all
            verdict = self.judge(closing=True)
            self.started = self.clock()
            self.primary, self.candidate = Window(), Window()
            if verdict:
                return verdict
        side = self.candidate if candidate else self.primary
        side.requests += 1
        if not ok:
            side.errors += 1
        elif latency_s is not None:
            side.latencies.append(latency_s)
        if candidate and not ok:
            return self.judge(closing=False)  # errors are judged at once
        return None

    def figures(self) -> dict[str, str]:
        """The window's figures, for the log line and the registry's history."""
        c, p = self.candidate, self.primary
        figures = {"candidate_requests": str(c.requests), "candidate_errors": str(c.errors),
                   "primary_requests": str(p.requests), "primary_errors": str(p.errors)}
        for name, side in (("candidate", c), ("primary", p)):
            if (p99 := side.p99()) is not None:
                figures[f"{name}_p99_ms"] = f"{p99 * 1000:.1f}"
        return figures

    def judge(self, closing: bool) -> str | None:
        b, c, p = self.bounds, self.candidate, self.primary
        if c.requests < b.min_requests:
            return None
        success = 1 - c.error_rate
        if success < b.min_success_rate:
            return (f"success rate {success:.1%} over {c.requests} candidate requests is below "
                    f"{b.min_success_rate:.1%}")
        if p.requests and c.error_rate - p.error_rate > b.max_error_rate_increase:
            return (f"error rate {c.error_rate:.1%} is {c.error_rate - p.error_rate:.1%} above the "
                    f"primary's {p.error_rate:.1%} (bound {b.max_error_rate_increase:.1%})")
        if not closing or (c99 := c.p99()) is None:
            return None
        if c99 * 1000 > b.max_p99_ms:
            return f"p99 latency {c99 * 1000:.1f} ms is above {b.max_p99_ms:g} ms"
        p99 = p.p99()
        if p99 and c99 > b.max_p99_ratio * p99:
            return (f"p99 latency {c99 * 1000:.1f} ms is {c99 / p99:.2f}x the primary's "
                    f"{p99 * 1000:.1f} ms (bound {b.max_p99_ratio:g}x)")
        return None


# -- a candidate being served ------------------------------------------------------------------
class CandidateFailed(Exception):
    """The candidate raised or gave a non-finite output (the primary answers instead)."""


def _finite(out: np.ndarray) -> bool:
    return bool(np.isfinite(out).all())


class Rollout:
    """A candidate version of `primary`'s name, with its own lifecycle (batcher, statistics),
    routed and judged by `policy`. `on_rollback(reason, figures)` ends the policy in the
    registry; it runs on a thread."""

    def __init__(self, primary: Lifecycle, policy, model: LoadedModel,
                 on_rollback: Callable[[str, dict[str, str]], None]):
        self.primary, self.policy = primary, policy
        self.candidate = Lifecycle(primary.name, primary.settings, primary.metrics, primary.decode_slots)
        self.candidate.start_batcher(model)
        self.router = Router(policy.percent, salt=f"{primary.name}/{policy.candidate}")
        self.monitor = Monitor(Bounds.of(policy))
        self.on_rollback = on_rollback
        self.pulled: str | None = None  # why the monitor pulled the candidate
        self.mirrors: set[asyncio.Task] = set()
        self.compared = self.agreeing = 0  # shadow rows compared with the primary, and agreeing
        self.metrics = primary.metrics
        self.metrics.candidate.labels(primary.name).set(self._number(model.version))

    @staticmethod
    def _number(version: str) -> float:
        return float(version) if version.isdigit() else 0

    @property
    def mode(self) -> str:
        return self.policy.mode

    @property
    def active(self) -> bool:
        return self.pulled is None and self.candidate.model is not None

    def update(self, policy) -> None:
        """The same candidate under a changed policy (percent, mode, bounds): a new window."""
        self.policy = policy
        self.router = Router(policy.percent, salt=f"{self.primary.name}/{policy.candidate}")
        self.monitor = Monitor(Bounds.of(policy))

    def describe(self) -> dict:
        policy = self.policy.model_dump(mode="json")
        return {"version": self.candidate.version, "mode": self.mode, "percent": self.policy.percent,
                "key_header": self.policy.key_header, "active": self.active, "pulled": self.pulled,
                "window": self.monitor.figures(), "policy": policy,
                **({"agreement": self.agreeing / self.compared, "compared_rows": self.compared}
                   if self.compared else {})}

    # -- routing --------------------------------------------------------------------------
    def route(self, key: str | None) -> Lifecycle:
        """The lifecycle a request goes to: the candidate for a canary's share, else the primary."""
        if self.mode == "canary" and self.active and self.router.chosen(key):
            return self.candidate
        return self.primary

    # -- canary ---------------------------------------------------------------------------
    async def canary(self, read, trace: Trace, on_primary) -> Prediction:
        """The candidate answers; when it fails, `on_primary(read, trace)` (the primary) does,
        with the items already read."""
        items: list = []

        async def once(card):
            if not items:
                items.append(await read(card))
            return items[0]

        started = time.perf_counter_ns()
        try:
            done = await Lifecycle.predict(self.candidate, once, trace)
            if not _finite(done.out):
                raise CandidateFailed(f"v{done.model.version} gave a non-finite output")
        except ApiError as exc:
            if exc.status < 500:  # the request's own fault: the primary would refuse it too
                raise
            failure: Exception = exc
        except Exception as exc:  # an ONNX Runtime error, a non-finite output
            failure = exc
        else:
            self._record(True, True, trace)
            return done
        elapsed = time.perf_counter_ns() - started
        version = self.candidate.version
        # The candidate's attempt counts as a failure of its version; the primary's answer
        # counts for the primary when the request ends.
        self.metrics.requests.labels(self.primary.name, version, "500", trace.protocol).inc()
        self.candidate.stats.stages["fail"].add(elapsed)
        self._record(True, False, trace)
        log.debug("candidate %s v%s failed (%s); the primary answers", self.primary.name, version, failure)
        # The primary starts over: the trace times its attempt alone, for the same request.
        protocol, fetch = trace.protocol, trace.fetch
        for stage in fields(Trace):
            setattr(trace, stage.name, stage.default)
        trace.side, trace.protocol, trace.fetch = self.primary, protocol, fetch
        return await on_primary(once, trace)

    def primary_failed(self, trace: Trace) -> None:
        """The primary failed a request (a server error): the monitor compares error rates."""
        self._record(False, False, trace)

    # -- shadow -----------------------------------------------------------------------------
    def after_primary(self, done: Prediction, trace: Trace) -> None:
        """The primary answered: note it, and in shadow mode mirror its batch to the candidate
        for a share of requests (never delaying the answer)."""
        self._record(False, True, trace)
        if self.mode != "shadow" or not self.active or done.x is None or not self.router.chosen():
            return
        if self.candidate.batcher is None or len(self.mirrors) >= self.primary.settings.max_queue:
            return  # the candidate is saturated: shadow traffic is best effort
        task = asyncio.get_running_loop().create_task(self._mirror(done), name=f"shadow-{self.primary.name}")
        self.mirrors.add(task)
        task.add_done_callback(self.mirrors.discard)

    async def _mirror(self, done: Prediction) -> None:
        candidate = self.candidate
        try:
            with candidate.request("shadow") as trace:
                try:
                    x = convert_input(done.x, done.model.card.input, candidate.loaded().card.input)
                    out, model = await candidate.wait(candidate.enqueue(x, trace), trace)
                except ApiError:
                    raise
                except Exception as exc:
                    raise CandidateFailed(str(exc)) from None
                trace.version = model.version
                if not _finite(out):
                    raise CandidateFailed(f"v{model.version} gave a non-finite output")
                self._compare(done, out, model.version)
        except ApiError as exc:
            if exc.status == 503:  # its queue is full: best effort, not the candidate's fault
                return
            self._record(True, False, trace)
        except CandidateFailed:
            self._record(True, False, trace)
        else:
            self._record(True, True, trace)

    def _compare(self, done: Prediction, out: np.ndarray, version: str) -> None:
        found = compare(done.model.card.task, done.out, out)
        name, m = self.primary.name, self.metrics
        self.compared += found.rows
        self.agreeing += found.agreeing
        m.shadow_rows.labels(name, version).inc(found.rows)
        m.shadow_agreeing.labels(name, version).inc(found.agreeing)
        m.agreement.labels(name, version).set(self.agreeing / self.compared)
        for iou in found.iou:
            m.box_iou.labels(name, version).observe(iou)

    # -- judging --------------------------------------------------------------------------
    def _record(self, candidate: bool, ok: bool, trace: Trace) -> None:
        if self.pulled is not None:
            return
        latency = (trace.queue_ns + trace.infer_ns) / 1e9 if ok else None
        reason = self.monitor.record(candidate, ok, latency)
        if reason is not None:
            self.pull(reason)

    def pull(self, reason: str) -> None:
        """Stop sending the candidate traffic now; end the policy in the registry on a thread."""
        figures = self.monitor.figures()
        self.pulled = reason
        name, version = self.primary.name, self.candidate.version
        self.metrics.rollbacks.labels(name, version).inc()
        log.error("rollout of %s v%s (%s) rolled back automatically: %s", name, version, self.mode, reason)
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, self._end, reason, figures)

    def _end(self, reason: str, figures: dict[str, str]) -> None:
        try:
            self.on_rollback(reason, figures)
        except Exception as exc:  # the registry is unreachable: this replica has stopped anyway
            log.error("could not record the automatic rollback of %s in the registry: %s",
                      self.primary.name, exc)

    async def stop(self) -> None:
        """The candidate is no longer served: let what it holds finish, then stop its batcher."""
        self.metrics.candidate.labels(self.primary.name).set(0)
        batcher = self.candidate.batcher
        if batcher is None:
            return
        deadline = time.monotonic() + self.primary.settings.request_timeout_s
        while (batcher.depth or batcher.arriving or self.mirrors) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await batcher.stop()


def server_actor() -> str:
    """Who ends a policy when the service rolls a candidate back."""
    return f"waldo-serve@{socket.gethostname()}"
