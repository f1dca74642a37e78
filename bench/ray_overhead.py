"""What running on Ray costs: 1 Ray Train worker against in-process Lightning.

Both paths run `training.pipeline.run(spec)` on the same spec (digits, same model, batch size,
seed, epochs); only `workers` differs (0: in-process, 1: one Ray Train worker). A callback
stamps the end of every training batch and, on rank 0, logs to the run's MLflow metrics (where
this script reads them):

- steady-state images/s: epochs after the first, batches 2..N of each, so the time between
  epochs (validation, checkpoints, Ray's per-epoch report) is left out;
- images/s with the epoch ends: from the end of the first epoch to the end of the last, with
  everything that happens between epochs;
- the wall-clock time of the first batch.

Printed, for each of `--repeats` rounds (in-process, then Ray, in turn, so both see the same
load; every Ray round starts its own local Ray and shuts it down) and as medians:

- both throughputs of each path and their ratios (target for the steady state: at least 0.9);
- Ray's fixed start-up cost: time from calling `train()` to the end of the first batch, Ray
  minus in-process (ray.init, worker start, process-group setup, the worker's imports).

    .venv/bin/python bench/ray_overhead.py [--model cnn] [--batch-size 64] [--epochs 20]
                                           [--repeats 3]

On digits an epoch is about 20 batches and 0.2-0.4 s, so a few epochs measure little more than
a second right after the worker started, while Ray's helper actors are still importing (one
of them, Ray Data's, for about 1.5 CPU-seconds): use 20 epochs or more for a steady state.
Files go to a temporary folder that the script changes into and removes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import pytorch_lightning as pl

TARGET = 0.9


class BatchClock(pl.Callback):
    """Rank 0 logs `bench_images_per_s` (steady state), `bench_epoch_images_per_s` (epoch ends
    included) and `bench_first_batch_unix`."""

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
        all_images = sum(n for epoch in self.stamps[1:] for _, n in epoch)
        all_seconds = self.stamps[-1][-1][0] - self.stamps[0][-1][0]
        trainer.logger.log_metrics({"bench_images_per_s": images / seconds,
                                    "bench_epoch_images_per_s": all_images / all_seconds,
                                    "bench_first_batch_unix": self.stamps[0][0][0]})


def run(spec, label: str) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    from training.pipeline import run as train

    started = time.time()
    result = train(spec, callbacks=[BatchClock()])
    metrics = MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
    out = {"steady": metrics["bench_images_per_s"], "epochs": metrics["bench_epoch_images_per_s"],
           "first": metrics["bench_first_batch_unix"] - started}
    print(f"  {label:12s} {out['steady']:6.0f} images/s steady, {out['epochs']:6.0f} with epoch "
          f"ends, first batch after {out['first']:5.1f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of in-process, then Ray")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in each path (Ray gives its worker 1 CPU)")
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # Ray workers read it at start
    import ray
    import torch

    torch.set_num_threads(args.threads)
    from training.spec import TrainSpec

    workdir = tempfile.mkdtemp(prefix="waldo-bench-")
    os.chdir(workdir)
    try:
        base = dict(model=args.model, data="digits", batch_size=args.batch_size,
                    epochs=args.epochs, progress_bar=False, experiment="bench-ray")
        print(f"{args.model}, batch {args.batch_size}, {args.epochs} epochs, "
              f"{args.threads} thread(s), {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}")
        rounds = []
        for i in range(args.repeats):
            print(f"round {i + 1}:")
            local = run(TrainSpec(**base, workers=0), "in-process")
            on_ray = run(TrainSpec(**base, workers=1), "1 Ray worker")
            ray.shutdown()  # the next round starts its own, as a fresh `waldo train` would
            rounds.append({"steady": on_ray["steady"] / local["steady"],
                           "epochs": on_ray["epochs"] / local["epochs"],
                           "startup": on_ray["first"] - local["first"]})
            print(f"  ratio {rounds[-1]['steady']:.2f} steady, {rounds[-1]['epochs']:.2f} with "
                  f"epoch ends; Ray start-up {rounds[-1]['startup']:.1f} s", flush=True)
        median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(f"median over {len(rounds)} round(s), load average now {os.getloadavg()[0]:.1f}:")
        print(f"ratio (Ray / in-process), steady state: {median['steady']:.2f}  "
              f"[{'PASS' if median['steady'] >= TARGET else 'BELOW'} target {TARGET}]")
        print(f"ratio (Ray / in-process), with epoch ends: {median['epochs']:.2f}")
        print(f"Ray fixed start-up cost: {median['startup']:.1f} s")
    finally:
        os.chdir("/")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
