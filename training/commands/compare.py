"""Comparisons of several networks on the same data, under one parent MLflow run.

The source material's experiment is one of them: the dense MLP against the two-conv CNN on
real MNIST digits (`mnist-5k`), both with Adam at lr 0.005 and batches of 1,000.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from training.spec import TrainSpec, build_spec

if TYPE_CHECKING:
    from training.running.steps import TrainResult

# The source's settings; `waldo compare` starts from these, and flags override them. Its
# --help shows them, so this module imports torch, Lightning and MLflow only when it trains.
SOURCE_EXPERIMENT = {
    "data": "mnist-5k",
    "optimizer": "adam",
    "lr": 0.005,
    "lr_schedule": "none",
    "batch_size": 1000,
    "epochs": 60,
    "augment": "none",  # and none of the recipe's other additions
    "label_smoothing": 0.0,
    "ema_decay": None,
    "experiment": "mlp-vs-cnn",
}


def compare(models: Sequence[str], base: TrainSpec) -> tuple[str, dict[str, TrainResult]]:
    """Train each of `models` with `base`'s settings as nested runs of one parent run, and log
    a plot of their validation accuracy per epoch on the parent. Returns the parent run id and
    the result of each model. Each model's spec is validated first (its name, its model_args),
    so a bad one stops the comparison before anything trains."""
    from training.running.pipeline import run
    from training.tracking import viz
    from training.tracking.runs import start_run

    specs = {m: build_spec(TrainSpec, None, {**base.model_dump(), "model": m}) for m in models}
    with start_run(base.experiment, run_name="compare " + " vs ".join(models),
                   tracking_uri=base.tracking_uri, tags={"waldo.compare": ",".join(models)}) as parent:
        params = {k: v for k, v in base.to_params().items() if k != "model"}
        parent.log_params({**params, "models": ",".join(models)})
        results = {m: run(specs[m], parent_run_id=parent.run_id) for m in models}
        curves = {}
        for name, result in results.items():
            child = type(parent)(parent.client, result.run_id, parent.experiment_id, parent.tracking_uri)
            curves[name] = child.metric_history("val_acc")
            parent.log_metrics({f"{name}.final_val_acc": curves[name][-1],
                                f"{name}.test_acc": result.metrics.get("test_acc", float("nan"))})
        parent.log_figure(viz.compare_curves(curves, "val_acc"), "val_acc_comparison.png")
    return parent.run_id, results
