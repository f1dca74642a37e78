"""Does transfer pay? A localizer on `localization-digits` started from an `mnist-5k` classifier
(`--init-from RUN_ID`) against the same localizer trained from scratch, for the same epochs.

    .venv/bin/python bench/transfer.py [--model cnn] [--epochs 5] [--seeds 0 1 2]

One classifier is trained on mnist-5k first; then, per seed, two localizers that differ only in
their starting point. Printed: test class accuracy and mean IoU (over images that hold a digit)
per seed, their means, and the ratio init-from / scratch, with the machine's load average. All
runs go to a temporary MLflow store.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each localizer")
    parser.add_argument("--source-epochs", type=int, default=None,
                        help="epochs of the classifier (default: mnist-5k's recipe)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--loss-variant", default="mse", choices=["mse", "ce"],
                        help="localization loss of both arms")
    parser.add_argument("--freeze-epochs", type=int, default=0,
                        help="init-from runs train only the head for this many epochs first "
                             "(--freeze backbone --unfreeze-at-epoch N)")
    args = parser.parse_args()

    from training.running.pipeline import run
    from training.spec import TrainSpec

    root = Path(tempfile.mkdtemp(prefix="waldo-transfer-"))
    common = dict(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", storage=str(root / "runs"),
                  progress_bar=False, model=args.model, batch_size=args.batch_size)
    started = time.perf_counter()
    given = {"epochs": args.source_epochs} if args.source_epochs else {}
    source_spec = TrainSpec(**common, data="mnist-5k", seed=0, **given)
    source = run(source_spec)
    print(f"source: {args.model} on mnist-5k, {source_spec.epochs} epochs: test_acc "
          f"{source.metrics.get('test_acc', float('nan')):.4f} ({time.perf_counter() - started:.0f} s) "
          f"[load {os.getloadavg()[0]:.2f}]")

    results: dict[str, list[tuple[float, float]]] = {"scratch": [], "init-from": []}
    for seed in args.seeds:
        warm = ({"freeze": "backbone", "unfreeze_at_epoch": args.freeze_epochs}
                if args.freeze_epochs else {})
        for label, start in (("scratch", {}), ("init-from", {"init_from": source.run_id, **warm})):
            spec = TrainSpec(**common, task="localize", data="localization-digits", epochs=args.epochs,
                             seed=seed, loss_variant=args.loss_variant, **start)
            t0 = time.perf_counter()
            metrics = run(spec).metrics
            cls_acc, iou = metrics["test_cls_acc"], metrics["test_iou"]
            results[label].append((cls_acc, iou))
            print(f"seed {seed} {label:9s}: test class accuracy {cls_acc:.4f}, mean IoU {iou:.4f} "
                  f"({time.perf_counter() - t0:.0f} s) [load {os.getloadavg()[0]:.2f}]")

    means = {k: (statistics.mean(a for a, _ in v), statistics.mean(b for _, b in v))
             for k, v in results.items()}
    for k, (acc, iou) in means.items():
        print(f"mean of {len(args.seeds)} seeds, {k:9s}: class accuracy {acc:.4f}, mean IoU {iou:.4f}")
    ratio_acc = means["init-from"][0] / means["scratch"][0]
    ratio_iou = means["init-from"][1] / means["scratch"][1]
    print(f"init-from / scratch: class accuracy {ratio_acc:.3f}x, mean IoU {ratio_iou:.3f}x "
          f"({args.model}, {args.epochs} epochs; target: both above 1)")


if __name__ == "__main__":
    main()
