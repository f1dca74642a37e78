"""Training throughput of `waldo train` against a plain PyTorch loop.

Both paths train the same network on the same data (`digits`), batch size, seed, optimizer
(Adam, the spec's lr) and torch thread count, on the CPU. Both are timed the same way: a
timestamp at the end of every training batch; an epoch's steady-state throughput is the images
of batches 2..N over the time from the end of batch 1 to the end of batch N. The first epoch is
warm-up and is skipped; the rest are pooled (images over seconds). Validation, testing,
checkpointing and MLflow's end-of-run artifacts fall outside these windows; per-step work
(Lightning's loop, hooks, metrics and logging) falls inside them.

The waldo path is `training.running.local.train(spec)` itself, with a timing callback passed in.
Each repeat runs both paths, alternating which goes first; the best repeat per path is reported.

    .venv/bin/python bench/train_throughput.py
    .venv/bin/python bench/train_throughput.py --models cnn --batch-size 64 256 --repeats 3

All files (the MLflow SQLite store, checkpoints, artifacts) go to a temporary folder that is
removed at the end; the script changes into it, so nothing is written to the repository.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from steptiming import device_name, load_average  # bench/steptiming.py

TARGET = 0.95


@dataclass
class EpochTiming:
    """Per-batch end timestamps of one epoch and the images in each batch."""

    stamps: list[float] = field(default_factory=list)
    images: list[int] = field(default_factory=list)

    def add(self, images: int) -> None:
        self.stamps.append(time.perf_counter())
        self.images.append(images)

    def window(self) -> tuple[int, float, int]:
        """(images, seconds, steps) from the end of batch 1 to the end of batch N."""
        if len(self.stamps) < 2:
            return 0, 0.0, 0
        return sum(self.images[1:]), self.stamps[-1] - self.stamps[0], len(self.stamps) - 1


@dataclass
class RunTiming:
    epochs: list[EpochTiming] = field(default_factory=list)
    threads_seen: int | None = None

    def steady(self, warmup: int = 1) -> tuple[float, float]:
        """(images/s pooled over the epochs after `warmup`, median seconds per full batch).

        The pooled figure is the throughput; the median step is a noise-robust cross-check
        (a busy machine stalls single steps, which moves the pooled figure but not the median).
        """
        epochs = self.epochs[warmup:]
        windows = [e.window() for e in epochs]
        images = sum(w[0] for w in windows)
        seconds = sum(w[1] for w in windows)
        full = max((n for e in epochs for n in e.images), default=0)
        steps = [b - a for e in epochs
                 for a, b, n in zip(e.stamps[:-1], e.stamps[1:], e.images[1:], strict=True)
                 if n == full]
        if seconds <= 0 or not steps:
            raise RuntimeError("too few batches per epoch to time; use a smaller --batch-size")
        return images / seconds, statistics.median(steps)


def make_probe(timing: RunTiming, between_epochs=None):
    """A Lightning callback that timestamps the end of every training batch (and, in the
    interleaved mode, runs `between_epochs()` after each epoch, outside the timed windows)."""
    import pytorch_lightning as pl
    import torch

    class ThroughputProbe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            timing.threads_seen = torch.get_num_threads()

        def on_train_epoch_start(self, trainer, pl_module):
            timing.epochs.append(EpochTiming())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            timing.epochs[-1].add(len(batch[0]))

        def on_train_epoch_end(self, trainer, pl_module):
            if between_epochs is not None:
                between_epochs()

    return ThroughputProbe()


def make_spec(model: str, batch_size: int, args, tmp: Path):
    from training.spec import TrainSpec

    return TrainSpec(
        model=model, data="digits", batch_size=batch_size, epochs=args.epochs, seed=args.seed,
        # The same work as the plain loop: none of the digits recipe's additions (augmentation,
        # label smoothing, EMA; bench/augment_cost.py measures what augmentation costs).
        augment="none", label_smoothing=0.0, ema_decay=None, accelerator="cpu",
        progress_bar=False, experiment="bench-throughput",
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", storage=str(tmp / "waldo_runs"),
    )


def run_waldo(spec, between_epochs=None) -> RunTiming:
    """`waldo train`'s path: `train(spec)` itself, with the timing callback added."""
    from training.running.local import train

    timing = RunTiming()
    train(spec, callbacks=[make_probe(timing, between_epochs)])
    return timing


class PlainLoop:
    """The same work as `train()`'s fit loop, by hand: same seed order, data, network and
    optimizer; forward, cross-entropy, zero_grad, backward, step; no metrics, hooks or logging."""

    def __init__(self, spec):
        import pytorch_lightning as pl
        import torch

        from training.data import create_datamodule
        from training.models import create_model

        pl.seed_everything(spec.seed, workers=True, verbose=False)  # as train() does, then
        self.dm = create_datamodule(spec.data_spec())  # the data and the network in train()'s order,
        self.dm.setup("fit")  # so the initial weights are the same
        self.model = create_model(
            spec.model, num_classes=self.dm.num_classes, in_channels=self.dm.in_channels,
            image_size=self.dm.image_size, **dict(spec.model_args),
        )
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=spec.lr,
                                    weight_decay=spec.weight_decay)
        self.loader = self.dm.train_dataloader()  # once, as Lightning does
        self.timing = RunTiming(threads_seen=torch.get_num_threads())

    def epoch(self) -> None:
        import torch.nn.functional as F

        timing = EpochTiming()
        self.timing.epochs.append(timing)
        for batch in self.loader:
            x, y = self.dm.on_after_batch_transfer(batch, 0)  # uint8 -> normalized float
            loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            timing.add(len(x))


def run_plain(spec) -> RunTiming:
    plain = PlainLoop(spec)
    for _ in range(spec.epochs):
        plain.epoch()
    return plain.timing


def run_interleaved(spec) -> tuple[RunTiming, RunTiming]:
    """One `train(spec)` whose callback runs one plain epoch after each waldo epoch, so that
    both paths see the same machine load (for busy shared machines)."""
    plain = PlainLoop(spec)
    waldo = run_waldo(spec, between_epochs=plain.epoch)
    return waldo, plain.timing


def combine(runs: list[tuple[float, float]], stat: str) -> tuple[float, float]:
    """(images/s, s/step) over the repeats: the best of each, or the median of each."""
    if stat == "best":
        return max(t[0] for t in runs), min(t[1] for t in runs)
    return statistics.median(t[0] for t in runs), statistics.median(t[1] for t in runs)


def load_text() -> str:
    return " ".join(f"{x:.1f}" for x in load_average()) or "n/a"


def quiet() -> None:
    """Keep the output to the table: no Lightning banners, MLflow migrations or warnings."""
    warnings.filterwarnings("ignore")
    for name in ["pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric",
                 "mlflow", "alembic", "matplotlib"]:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "lenet5"])
    parser.add_argument("--batch-size", nargs="+", type=int, default=[64])
    parser.add_argument("--epochs", type=int, default=6, help="per run; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=2, help="runs per path, order alternating")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stat", choices=["best", "median"], default="best",
                        help="how to combine the repeats of one path")
    parser.add_argument("--interleave", choices=["runs", "epochs"], default="runs",
                        help="runs: whole runs of each path, alternating order per repeat; "
                             "epochs: one plain epoch after each waldo epoch inside one "
                             "train() (steadier on a busy machine)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is warm-up)")

    import mlflow  # noqa: F401
    import pytorch_lightning as pl
    import torch

    quiet()  # after the imports: Lightning and MLflow set their loggers' levels when imported
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="waldo-bench-"))
    cwd = Path.cwd()
    os.chdir(tmp)
    try:
        print(f"machine: {device_name('cpu')} visible, load average "
              f"{load_text()}; python {platform.python_version()}, torch {torch.__version__}, "
              f"lightning {pl.__version__}; torch threads {torch.get_num_threads()}")
        print(f"data digits, epochs {args.epochs} (first skipped), repeats {args.repeats}, "
              f"interleave {args.interleave}, seed {args.seed}, stat {args.stat}, "
              f"target ratio >= {TARGET}\n", flush=True)

        rows = []
        for model in args.models:
            for bs in args.batch_size:
                spec = make_spec(model, bs, args, tmp)
                results: dict[str, list[tuple[float, float]]] = {"waldo": [], "plain": []}
                for r in range(args.repeats):
                    if args.interleave == "epochs":
                        waldo, plain = run_interleaved(spec)
                        timings = {"waldo": waldo, "plain": plain}
                    else:
                        order = ["waldo", "plain"] if r % 2 == 0 else ["plain", "waldo"]
                        timings = {path: run_waldo(spec) if path == "waldo" else run_plain(spec)
                                   for path in order}
                    for path, timing in timings.items():
                        if timing.threads_seen != args.threads:
                            print(f"  warning: {path} ran with {timing.threads_seen} threads")
                        ips, step = timing.steady()
                        results[path].append((ips, step))
                        print(f"  {model:<8} bs {bs:<4} repeat {r + 1} {path:<5} "
                              f"{ips:9.0f} img/s  {step * 1e3:7.2f} ms/step (median)",
                              flush=True)
                    torch.set_num_threads(args.threads)
                rows.append((model, bs, combine(results["waldo"], args.stat),
                             combine(results["plain"], args.stat)))

        header = (f"{'model':<8} {'batch':>5} {'waldo img/s':>12} {'plain img/s':>12} "
                  f"{'ratio':>6}  {'result':<6} | {'waldo ms/step':>13} {'plain ms/step':>13} "
                  f"{'step ratio':>10}")
        print("\n" + header)
        print("-" * len(header))
        worst = float("inf")
        for model, bs, (w_ips, w_step), (p_ips, p_step) in rows:
            ratio = w_ips / p_ips
            worst = min(worst, ratio)
            verdict = "PASS" if ratio >= TARGET else "BELOW"
            print(f"{model:<8} {bs:>5} {w_ips:>12.0f} {p_ips:>12.0f} {ratio:>6.2f}  {verdict:<6} | "
                  f"{w_step * 1e3:>13.2f} {p_step * 1e3:>13.2f} {p_step / w_step:>10.2f}")
        print(f"\nimg/s: images of batches 2..N over their time, epochs 2..{args.epochs} pooled, "
              f"{args.stat} of {args.repeats} repeats.\nms/step: median interval between "
              "full batches (noise-robust cross-check); step ratio = plain/waldo.")
        print(f"\nworst ratio {worst:.2f} (target >= {TARGET}); load average now "
              f"{load_text()} (a load above the CPU count makes these figures noisy)")
        return 0
    finally:
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
