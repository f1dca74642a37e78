"""What augmentation costs per training step: `waldo train`'s path (`training.running.local.train`)
with `--augment none` and with each preset, the same network, data and batch size, on the CPU.

Each run takes a timestamp at the end of every training batch (a callback); a run's figure is
the median interval between batches after its first epoch, as steps per second. Presets run in
turn, `--repeats` times, and the best of each is kept. Printed: steps/s per preset and its
ratio to `none` (the target for `basic` is at least 0.75), with the load average.

    .venv/bin/python bench/augment_cost.py --model cnn --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

TARGET = 0.75  # steps/s with `basic` over steps/s with `none`


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--data", default="mnist-5k")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--presets", nargs="+",
                        default=["none", "basic", "trivialaugment", "randaugment", "autoaugment"])
    args = parser.parse_args()

    import pytorch_lightning as pl
    import torch

    from training.running.local import train
    from training.spec import TrainSpec

    class Stamps(pl.Callback):
        def __init__(self):
            self.stamps: list[float] = []
            self.per_epoch = 0

        def on_train_epoch_end(self, trainer, pl_module):
            self.per_epoch = self.per_epoch or len(self.stamps)

        def on_train_batch_end(self, *_):
            self.stamps.append(time.perf_counter())

    root = Path(tempfile.mkdtemp(prefix="waldo-augment-"))
    print(f"{args.model} on {args.data}, batch {args.batch_size}, {torch.get_num_threads()} threads "
          f"[load {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs]")
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for preset in args.presets:
            stamps = Stamps()
            spec = TrainSpec(model=args.model, data=args.data, batch_size=args.batch_size,
                             epochs=args.epochs, augment=preset, ema_decay=None,
                             accelerator="cpu", progress_bar=False,
                             tracking_uri=f"sqlite:///{root / 'mlflow.db'}", storage=str(root / "runs"))
            train(spec, callbacks=[stamps])
            after = stamps.stamps[stamps.per_epoch:]
            rate = 1 / statistics.median(b - a for a, b in zip(after, after[1:]))
            best[preset] = max(best.get(preset, 0.0), rate)
            print(f"  {preset:15s} {rate:7.1f} steps/s [load {os.getloadavg()[0]:.2f}]", flush=True)
    base = best.get("none")
    print("\npreset          steps/s  vs none")
    for preset, rate in best.items():
        ratio = f"{rate / base:.2f}x" if base else "n/a"
        mark = "  (target >= 0.75x)" if preset == "basic" else ""
        print(f"{preset:15s} {rate:7.1f}  {ratio}{mark}")
    print(f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
