"""Which recipe makes a good default? Trains one network on one data set under several recipes
(each a set of spec fields over the same base spec) and prints, per recipe and seed, the test
accuracy, the best validation accuracy and the wall time, then the mean per recipe, with the
machine's load average.

    .venv/bin/python bench/recipes.py --model lenet5 --data mnist-5k --epochs 30 --seeds 0 1
    .venv/bin/python bench/recipes.py --recipe plain augment=none --recipe smooth label_smoothing=0.1

Without `--recipe`, the candidates below are tried. All runs go to a temporary MLflow store.
Accuracy does not depend on the load; wall time does, so compare times only at equal load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

CANDIDATES: dict[str, dict[str, object]] = {
    "default": {},
    "none": {"augment": "none"},
    "basic": {"augment": "basic"},
    "basic+smooth0.1": {"augment": "basic", "label_smoothing": 0.1},
    "basic+ema0.999": {"augment": "basic", "ema_decay": 0.999},
    "basic+warmup1": {"augment": "basic", "warmup_epochs": 1},
    "trivialaugment": {"augment": "trivialaugment"},
}


# What a recipe line prints about the spec it trained.
RECIPE_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "lr_schedule", "augment",
                 "label_smoothing", "ema_decay", "mixup_alpha", "cutmix_alpha", "warmup_epochs")


def parse_recipe(items: list[str]) -> tuple[str, dict[str, object]]:
    import yaml

    name, *pairs = items
    fields = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        fields[key] = yaml.safe_load(value)
    return name, fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--data", default="mnist-5k")
    parser.add_argument("--task", default="classify")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipe", nargs="+", action="append", metavar="NAME [FIELD=VALUE ...]",
                        help="a recipe to try (repeatable); default: the built-in candidates")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="fields of the base spec, e.g. lr=0.001 batch_size=64")
    args = parser.parse_args()

    from training.running.local import train
    from training.spec import TrainSpec

    recipes = dict(parse_recipe(r) for r in args.recipe) if args.recipe else CANDIDATES
    base = parse_recipe(["base", *args.set])[1]
    root = Path(tempfile.mkdtemp(prefix="waldo-recipes-"))
    common = dict(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", storage=str(root / "runs"),
                  progress_bar=False, model=args.model, data=args.data, task=args.task, **base)
    if args.epochs:
        common["epochs"] = args.epochs
    metric = "test_acc" if args.task == "classify" else "test_cls_acc"
    print(f"{args.model} on {args.data}, {args.epochs or 'default'} epochs, base {base or 'defaults'} "
          f"[load {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs]")
    table: dict[str, list[tuple[float, float]]] = {}
    for name, fields in recipes.items():
        for seed in args.seeds:
            spec = TrainSpec(**{**common, "seed": seed, **fields})
            if seed == args.seeds[0]:
                recipe = {k: getattr(spec, k) for k in RECIPE_FIELDS}
                print(f"{name}: {', '.join(f'{k}={v}' for k, v in recipe.items())}", flush=True)
            t0 = time.perf_counter()
            result = train(spec)
            seconds = time.perf_counter() - t0
            accuracy = result.metrics[metric]
            table.setdefault(name, []).append((accuracy, seconds))
            print(f"{name:18s} seed {seed}: {metric} {accuracy:.4f} ({seconds:.0f} s) "
                  f"[load {os.getloadavg()[0]:.2f}]", flush=True)
    print(f"\nmean of {len(args.seeds)} seed(s):")
    for name, rows in table.items():
        print(f"  {name:18s} {metric} {statistics.mean(a for a, _ in rows):.4f}  "
              f"{statistics.mean(s for _, s in rows):.0f} s")


if __name__ == "__main__":
    main()
