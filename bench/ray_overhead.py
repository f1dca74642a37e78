"""What running on Ray costs: 1 Ray Train worker against in-process Lightning.

Both paths run `training.running.pipeline.run(spec)` on the same spec (digits, same model, batch size,
seed, epochs); only `workers` differs (0: in-process, 1: one Ray Train worker). A callback
stamps the end of every training batch and, on rank 0, logs to the run's MLflow metrics (where
this script reads them):

- steady-state images/s: epochs after the first, batches 2..N of each, so the time between
  epochs (validation, checkpoints, Ray's per-epoch report) is left out;
- images/s with the epoch ends: from the end of the first epoch to the end of the last, with
  everything that happens between epochs;
- the wall-clock time of the first batch.

Printed, for each of `--repeats` rounds (in-process, then Ray cold, then Ray warm, in turn, so
all see the same load) and as medians:

- the throughputs of each path and their ratios to in-process (target for the steady state:
  at least 0.95);
- the time from calling `train()` to the end of the first batch: in-process; cold (the job
  starts its own local Ray, as `waldo train --workers 1` does with no cluster running); warm
  (the job joins a head that `waldo cluster up` keeps running, started once by this script with
  `training.running.cluster.up` on free ports; target: at most 10 s).

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
import socket
import statistics
import tempfile
import time

import pytorch_lightning as pl

TARGET = 0.95  # steady-state images/s of 1 Ray worker over in-process
FIRST_BATCH_S = 10.0  # a 1-worker job joining a running head reaches its first batch within this


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(spec, label: str) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    from training.running.pipeline import run as train

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
    workdir = tempfile.mkdtemp(prefix="waldo-bench-")
    os.chdir(workdir)
    # The warm path's head, as `waldo cluster up` starts it; its token settings must be in the
    # environment before Ray is imported.
    from training.running import cluster

    os.environ["WALDO_CLUSTER_FILE"] = os.path.join(workdir, "cluster.json")
    started = time.monotonic()
    head = cluster.up(port=free_port(), dashboard_port=free_port())
    cluster.address()
    print(f"`waldo cluster up` (training.running.cluster.up): head up in {time.monotonic() - started:.1f} s")
    import ray
    import torch

    torch.set_num_threads(args.threads)
    from training.spec import TrainSpec

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
            cold = run(TrainSpec(**base, workers=1, ray_address="local"), "Ray, cold")
            ray.shutdown()  # the next round starts its own, as a fresh `waldo train` would
            warm = run(TrainSpec(**base, workers=1, ray_address=head["address"]), "Ray, warm")
            ray.shutdown()  # this driver leaves; the head stays up
            rounds.append({"steady": warm["steady"] / local["steady"],
                           "epochs": warm["epochs"] / local["epochs"],
                           "cold_steady": cold["steady"] / local["steady"],
                           "local_first": local["first"], "cold_first": cold["first"],
                           "warm_first": warm["first"]})
            print(f"  warm/in-process {rounds[-1]['steady']:.2f} steady, {rounds[-1]['epochs']:.2f} with "
                  f"epoch ends; cold/in-process {rounds[-1]['cold_steady']:.2f} steady", flush=True)
        median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(f"median over {len(rounds)} round(s), load average now {os.getloadavg()[0]:.1f}:")
        print(f"ratio (1 Ray worker, warm / in-process), steady state: {median['steady']:.2f}  "
              f"[{'PASS' if median['steady'] >= TARGET else 'BELOW'} target {TARGET}]")
        print(f"ratio (warm / in-process), with epoch ends: {median['epochs']:.2f}; "
              f"cold / in-process, steady: {median['cold_steady']:.2f}")
        print(f"first batch after: in-process {median['local_first']:.1f} s, Ray cold "
              f"{median['cold_first']:.1f} s, Ray warm {median['warm_first']:.1f} s  "
              f"[{'PASS' if median['warm_first'] <= FIRST_BATCH_S else 'ABOVE'} target "
              f"{FIRST_BATCH_S:g} s warm]")
    finally:
        cluster.down()
        os.chdir("/")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
