"""Hyperparameter sweeps: Ray Tune over the same Ray Train job that `waldo train` runs.

Each trial is a Tune function that launches a TorchTrainer (Ray Train V2's way of nesting
Train in Tune) with its overrides from `param_space={"train_loop_config": ...}`; Ray Train's
reports reach Tune through `TuneReportCallback`, so ASHA can stop a trial between epochs.
MLflow gets one parent run, and one nested child run per trial.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.errors import WaldoError
from training.running.distributed import scratch_folder, train_distributed
from training.running.rayinit import connect
from training.running.steps import monitor_of, resolve_locations
from training.spec import SweepSpec, TrainSpec, parse_distribution
from training.tracking import storage
from training.tracking.runs import start_run

if TYPE_CHECKING:
    from training.export import ExportResult

STOPPED_EARLY = "stopped early"
STOPPED_EARLY_TAG = "waldo.stopped_early"  # "true" on a trial's run that the scheduler stopped


@dataclass
class SweepResult:
    parent_run_id: str
    best_config: dict[str, Any]
    best_metric: float
    best_checkpoint: str | None  # the best trial's checkpoint in storage
    best_run_id: str | None = None  # the best trial's child run
    trials: list[dict[str, Any]] = field(default_factory=list)
    export: ExportResult | None = None  # set by `training.running.pipeline.run_sweep` when asked
    ui_hint: str = ""  # how to open the parent run in MLflow's UI


def search_space(spec: SweepSpec) -> dict[str, Any]:
    """`--search` strings -> Ray Tune distributions."""
    from ray import tune

    space = {}
    for name, text in spec.search.items():
        dist, args = parse_distribution(name, text)
        space[name] = tune.choice(args) if dist == "choice" else getattr(tune, dist)(*args)
    return space


def _trial(config: dict[str, Any], base: dict[str, Any], parent_run_id: str, sweep: str,
           scratch: str) -> None:
    """One trial: the base spec with this trial's overrides, as a Ray Train job."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    spec = TrainSpec.model_validate({**base, **config["train_loop_config"],
                                     "run_name": f"{sweep}-{trial_id}"})
    train_distributed(
        spec, parent_run_id=parent_run_id, ray_callbacks=[TuneReportCallback()],
        scratch=os.path.join(scratch, trial_id),
        on_start=lambda run, name: run.set_tags({"ray.trial_id": trial_id,
                                                 "waldo.sweep": sweep}),
    )


def sweep(spec: SweepSpec) -> SweepResult:
    """Run the sweep; record every trial as a child run and the best one on the parent."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    spec = resolve_locations(spec)  # trials run in folders of their own
    base = spec.base_spec().model_copy(update={"workers": max(1, spec.workers),
                                               "progress_bar": False})
    monitor, mode = monitor_of(base)
    name = spec.run_name or f"sweep-{spec.model}-{uuid.uuid4().hex[:6]}"
    connect(spec.ray_address)
    space = search_space(spec)
    scheduler = (ASHAScheduler(max_t=spec.epochs, grace_period=min(spec.grace_period, spec.epochs),
                               reduction_factor=2) if spec.scheduler == "asha" else None)
    # Both searches draw from the spec's seed, so a sweep samples the same configs again.
    max_concurrent = spec.max_concurrent
    if spec.search_alg == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise WaldoError("search_alg 'optuna' needs the optuna package: pip install optuna") from None
        search_alg = OptunaSearch(seed=spec.seed)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # It limits concurrency itself; Tune ignores max_concurrent_trials beside it.
        search_alg = BasicVariantGenerator(max_concurrent=spec.max_concurrent or 0,
                                           random_state=spec.seed)
        max_concurrent = None

    # Tune ends a stopped trial's processes without letting them clean up: their temporary
    # files go into one scratch folder that the sweep removes.
    with (scratch_folder() as scratch,
          start_run(spec.experiment, run_name=name, tracking_uri=spec.tracking_uri,
                    tags={"waldo.sweep": name, "waldo.model": spec.model}) as parent):
        parent.log_params({**base.to_params(), "trials": spec.trials, "scheduler": spec.scheduler,
                           "search_alg": spec.search_alg,
                           **{f"search.{k}": v for k, v in spec.search.items()}})
        parent.log_text(spec.to_yaml(), "sweep.yaml")
        trainable = tune.with_parameters(_trial, base=base.model_dump(mode="json"),
                                         parent_run_id=parent.run_id, sweep=name,
                                         scratch=scratch)
        # The trial function only waits on its Train job, whose workers hold the CPUs; it
        # reserves a little memory instead (Tune refuses an all-zero request).
        trainable = tune.with_resources(trainable, {"CPU": 0, "memory": 64 * 2**20})
        tuner = tune.Tuner(
            trainable,
            param_space={"train_loop_config": space},
            tune_config=tune.TuneConfig(
                metric=monitor, mode=mode, num_samples=spec.trials, scheduler=scheduler,
                search_alg=search_alg, max_concurrent_trials=max_concurrent,
                # A stopped trial's process must exit: its Train controller and workers share
                # its fate and free their CPUs. A reused process would keep them alive.
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(name=name, storage_path=spec.storage),
        )
        try:
            grid = tuner.fit()
        except BaseException as exc:  # the trials' processes are gone: close their runs too
            stopped = isinstance(exc, (KeyboardInterrupt, SystemExit))
            _end_open_children(parent, "KILLED" if stopped else "FAILED")
            raise
        trials = _record_trials(parent, grid, spec.epochs, monitor, mode, spec.storage)
        finished = [t for t in trials if t.get(monitor) is not None]
        if not finished:
            raise WaldoError(f"no trial of sweep {name!r} reported {monitor!r}; see the child runs")
        # Each trial's best epoch, among those that reported a checkpoint (all but failed ones).
        ranked = [t for t in finished if t.get("checkpoint")] or finished
        best = (min if mode == "min" else max)(ranked, key=lambda t: t[monitor])
        parent.log_metrics({f"best_{monitor}": best[monitor]})
        location = _adopt_best_checkpoint(parent, best)
        parent.set_tags({"best.trial_id": best["trial_id"], "best.run_id": best.get("run_id", "")})
        parent.log_text(json.dumps({"config": best["config"], monitor: best[monitor],
                                    "run_id": best.get("run_id"), "checkpoint": location},
                                   indent=2), "best_trial.json")
        parent.log_figure(_trials_plot(trials, list(spec.search), monitor), "trials.png")
    return SweepResult(parent.run_id, best["config"], best[monitor], location,
                       best.get("run_id"), trials, ui_hint=parent.ui_hint)


def _adopt_best_checkpoint(parent, best: dict[str, Any]) -> str | None:
    """Log the best trial's checkpoint on its child run and the parent run, and record it on
    the parent as the parent's own (`training.tracking.storage`), so either run exports like any."""
    location = best.get("checkpoint")
    if location is None:
        return None
    artifact = f"{storage.CHECKPOINT_ARTIFACT_DIR}/{Path(location).name}"
    with tempfile.TemporaryDirectory() as tmp:
        local = storage.fetch(location, tmp)
        for run_id in filter(None, [best.get("run_id"), parent.run_id]):
            parent.client.log_artifact(run_id, str(local), storage.CHECKPOINT_ARTIFACT_DIR)
            parent.client.set_tag(run_id, storage.BEST_ARTIFACT_TAG, artifact)
    storage.record_best_checkpoint(parent, location, artifact)
    return location


def _end_open_children(parent, status: str) -> None:
    """Close the trials' child runs still RUNNING, when the sweep itself ends early; a failure
    here must not hide the exception that ended it."""
    try:
        for child in parent.client.search_runs(
                [parent.experiment_id], f"tags.mlflow.parentRunId = '{parent.run_id}' "
                "and attributes.status = 'RUNNING'"):
            parent.client.set_terminated(child.info.run_id, status)
    except Exception:  # the exception in flight is the one to report
        pass


def _record_trials(parent, grid, epochs: int, monitor: str, mode: str,
                   root: str) -> list[dict[str, Any]]:
    """Close each trial's child run with its real outcome (finished, stopped early, failed),
    and record on it its best epoch's checkpoint (`training.tracking.storage`).

    Tune ends a trial's process at its last report, whether ASHA stopped it or it reached its
    last epoch, so the trial cannot record this itself: each report carries the metrics and the
    checkpoint of that epoch (TuneReportCallback), and the sweep reads them here. Ending the
    process can leave the run RUNNING, or mark it FAILED or KILLED on the way out; only a trial
    that raised is a failure, so any other ends FINISHED, a stopped one tagged
    `waldo.stopped_early=true`.
    """
    from ray.train.lightning import RayTrainReportCallback

    children = {r.data.tags.get("ray.trial_id"): r for r in parent.client.search_runs(
        [parent.experiment_id], f"tags.mlflow.parentRunId = '{parent.run_id}'")}
    trials = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or result.path.rsplit("_", 2)[-2]
        epochs_done = int(metrics.get("training_iteration", 0))
        if result.error is not None:
            status, mlflow_status = "failed", "FAILED"
        elif epochs_done < epochs:
            status, mlflow_status = STOPPED_EARLY, "FINISHED"
        else:
            status, mlflow_status = "completed", "FINISHED"
        value, checkpoint = _best_epoch(result, monitor, mode)
        location = (storage.join(storage.with_scheme(root, checkpoint),
                                 RayTrainReportCallback.CHECKPOINT_NAME) if checkpoint else None)
        trial = {"trial_id": trial_id, "config": result.config.get("train_loop_config", {}),
                 "epochs": epochs_done, "status": status, monitor: value, "checkpoint": location}
        child = children.get(trial_id)
        if child is not None:
            trial["run_id"] = child.info.run_id
            tags = {"waldo.trial_status": status}
            if status == STOPPED_EARLY:
                tags[STOPPED_EARLY_TAG] = "true"
            if location and storage.BEST_CHECKPOINT_TAG not in child.data.tags:
                tags[storage.BEST_CHECKPOINT_TAG] = location
            for key, tag in tags.items():
                parent.client.set_tag(child.info.run_id, key, tag)
            parent.client.log_metric(child.info.run_id, "epochs_completed", epochs_done)
            if child.info.status != mlflow_status:
                parent.client.set_terminated(child.info.run_id, mlflow_status)
        trials.append(trial)
    return trials


def _best_epoch(result, monitor: str, mode: str) -> tuple[float | None, str | None]:
    """(the trial's best value of `monitor`, the checkpoint of that epoch), from its reports."""
    frame = result.metrics_dataframe
    if frame is None or monitor not in frame or frame[monitor].isna().all():
        return (result.metrics or {}).get(monitor), None
    row = frame.loc[frame[monitor].idxmin() if mode == "min" else frame[monitor].idxmax()]
    checkpoint = row.get("checkpoint_path")
    return float(row[monitor]), checkpoint if isinstance(checkpoint, str) else None


def _trials_plot(trials: list[dict[str, Any]], params: list[str], monitor: str):
    """The monitored metric against each searched parameter, one panel each; stopped-early
    trials hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(params), figsize=(4.5 * len(params), 3.8), squeeze=False)
    for ax, param in zip(axes[0], params):
        for stopped in (False, True):
            pts = [(t["config"].get(param), t[monitor]) for t in trials
                   if t.get(monitor) is not None and (t["status"] == STOPPED_EARLY) == stopped]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, facecolors="none" if stopped else "C0", edgecolors="C0",
                           label=STOPPED_EARLY if stopped else "ran to the end")
        if param in ("lr", "weight_decay"):
            ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.set_ylabel(monitor)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["SweepResult", "search_space", "sweep"]
