"""Per-step timing for the training benchmarks: a mark at the end of every step (a CUDA event
on the GPU, so no host sync is added; `time.perf_counter()` on the CPU), steady-state figures
over the steps after the warm-up, torch.compile's graph count, and a count of host-device syncs
with torch's sync debug mode. Used by bench/gpu_train.py.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PathResult:
    """What one run of one path measured."""

    images_per_s: float
    ms_per_step_median: float
    steps: int  # steps taken in all (warm-up, timed and sync-probe steps)
    timed_steps: int
    loss_first: float  # mean training loss of the first steps and of the last ones: it trained
    loss_last: float
    param_change: float  # L2 norm of the weights' change over the run
    mfu: float | None = None
    compiles_in_window: int = 0  # graphs torch.compile built during the timed steps: 0, or
    # the warm-up was too short and the figure includes compilation
    syncs_per_step: float | None = None  # CUDA only (`--sync-steps`)
    sync_sites: list[str] = field(default_factory=list)


class SyncCounter:
    """Host-device syncs between `start()` and `stop()`, counted with torch's sync debug mode,
    which warns at every synchronizing CUDA call (`.item()`, `bool(tensor)`, `torch.unique`,
    blocking copies); the warning's location names the Python line that made it."""

    def __init__(self):
        self._catch: warnings.catch_warnings | None = None
        self._log: list = []
        self.count: int | None = None
        self.sites: Counter[str] = Counter()

    def start(self) -> None:
        import torch

        self._catch = warnings.catch_warnings(record=True)
        self._log = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        import torch

        if self._catch is None:
            return
        torch.cuda.set_sync_debug_mode(0)
        self._catch.__exit__(None, None, None)
        self._catch = None
        hits = [w for w in self._log if "synchroniz" in str(w.message)]
        self.count = len(hits)
        self.sites = Counter(f"{_short_path(w.filename)}:{w.lineno}" for w in hits)


def _short_path(name: str) -> str:
    """A file as the sync report names it: relative to site-packages or to the repository."""
    if "site-packages/" in name:
        return name.split("site-packages/", 1)[1]
    repo = str(Path(__file__).resolve().parents[1]) + os.sep
    return name.removeprefix(repo)


class StepTimer:
    """A mark at the end of every step, the images and the (detached) loss of each step, and
    the sync probe around the steps after the timed ones."""

    def __init__(self, device, warmup: int, timed: int, sync_steps: int):
        self.device, self.warmup, self.timed, self.sync_steps = device, warmup, timed, sync_steps
        self.marks: list = []
        self.images: list[int] = []
        self.losses: list = []
        self.syncs = SyncCounter()
        self._graphs: list[int] = []  # compiled graphs so far, at the window's start and end

    @property
    def total(self) -> int:
        return self.warmup + self.timed + self.sync_steps

    def mark(self, images: int, loss) -> None:
        import torch

        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())
        self.images.append(images)
        self.losses.append(loss.detach())  # read after the run: no sync per step
        n = len(self.marks)
        if n in (self.warmup, self.warmup + self.timed):
            self._graphs.append(_compiled_graphs())
        if self.sync_steps and n == self.warmup + self.timed:
            self.syncs.start()
        elif self.sync_steps and n == self.total:
            self.syncs.stop()

    def result(self, param_change: float) -> PathResult:
        """Steady-state figures over steps warmup+1 .. warmup+timed."""
        import torch

        self.syncs.stop()  # in case the run ended early
        end = self.warmup + self.timed
        if len(self.marks) < end:
            raise RuntimeError(f"the run took {len(self.marks)} steps, {end} were asked for")
        if self.device.type == "cuda":
            self.marks[end - 1].synchronize()
            first = self.marks[0]
            seconds = [0.0] + [first.elapsed_time(e) / 1e3 for e in self.marks[1:end]]
        else:
            seconds = [t - self.marks[0] for t in self.marks[:end]]
        window = seconds[end - 1] - seconds[self.warmup - 1]
        steps = [b - a for a, b in zip(seconds[self.warmup - 1:end - 1], seconds[self.warmup:end])]
        losses = torch.stack([x.float() for x in self.losses]).cpu().tolist()
        k = max(1, min(3, len(losses) // 3))
        syncs = self.syncs.count
        return PathResult(
            images_per_s=sum(self.images[self.warmup:end]) / window,
            ms_per_step_median=statistics.median(steps) * 1e3,
            steps=len(self.marks), timed_steps=self.timed,
            loss_first=statistics.fmean(losses[:k]), loss_last=statistics.fmean(losses[-k:]),
            param_change=param_change, compiles_in_window=self._graphs[1] - self._graphs[0],
            syncs_per_step=None if syncs is None else syncs / self.sync_steps,
            sync_sites=[f"{site} x{n}" for site, n in self.syncs.sites.most_common(8)],
        )


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
