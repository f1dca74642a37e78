"""What running on Ray costs: 1 Ray Train worker against in-process Lightning.

Both paths run `training.train.train(spec)` on the same spec (digits, same model, batch size,
seed, epochs); only `workers` differs (0: in-process, 1: one Ray Train worker). A callback
stamps the end of every training batch and, on rank 0, logs the steady-state images/s (epochs
after the first, batches 2..N of each) and the wall-clock time of the first batch to the run's
MLflow metrics, where this script reads them. Printed:

- steady-state images/s of each path and their ratio (target: at least 0.9);
- Ray's fixed start-up cost: time from calling `train()` to the end of the first batch, Ray
  minus in-process (ray.init, worker start, process-group setup, the worker's imports).

    .venv/bin/python bench/ray_overhead.py [--model cnn] [--batch-size 64] [--epochs 6]

Files go to a temporary folder that the script changes into and removes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import pytorch_lightning as pl

TARGET = 0.9


class BatchClock(pl.Callback):
    """Rank 0 logs `bench_images_per_s` (steady state) and `bench_first_batch_unix`."""

    def __init__(self):
        self.stamps: list[list[tuple[float, int]]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.stamps.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.stamps[-1].append((time.time(), len(batch[0])))

    def on_train_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.logger is None:
            return
        images = seconds = 0.0
        for epoch in self.stamps[1:]:  # the first epoch warms up
            if len(epoch) > 1:
                images += sum(n for _, n in epoch[1:])
                seconds += epoch[-1][0] - epoch[0][0]
        trainer.logger.log_metrics({"bench_images_per_s": images / seconds,
                                    "bench_first_batch_unix": self.stamps[0][0][0]})


def run(spec, label: str) -> tuple[float, float]:
    from mlflow.tracking import MlflowClient

    from training.train import train

    started = time.time()
    result = train(spec, callbacks=[BatchClock()])
    metrics = MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
    first = metrics["bench_first_batch_unix"] - started
    print(f"  {label:12s} {metrics['bench_images_per_s']:9.0f} images/s, first batch after "
          f"{first:5.1f} s")
    return metrics["bench_images_per_s"], first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in each path (Ray gives its worker 1 CPU)")
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # Ray workers read it at start
    import torch

    torch.set_num_threads(args.threads)
    from training.spec import TrainSpec

    workdir = tempfile.mkdtemp(prefix="waldo-bench-")
    os.chdir(workdir)
    try:
        base = dict(model=args.model, data="digits", batch_size=args.batch_size,
                    epochs=args.epochs, progress_bar=False, experiment="bench-ray")
        print(f"{args.model}, batch {args.batch_size}, {args.epochs} epochs, "
              f"{args.threads} thread(s), {os.cpu_count()} CPUs")
        local, local_first = run(TrainSpec(**base, workers=0), "in-process")
        ray_ips, ray_first = run(TrainSpec(**base, workers=1), "1 Ray worker")
        ratio = ray_ips / local
        print(f"ratio (Ray / in-process): {ratio:.2f}  "
              f"[{'PASS' if ratio >= TARGET else 'BELOW'} target {TARGET}]")
        print(f"Ray fixed start-up cost: {ray_first - local_first:.1f} s")
    finally:
        os.chdir("/")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
