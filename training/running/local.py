"""`train(spec)`: the in-process runner, plain Lightning in this process.

It neither dispatches to Ray nor exports: `training.running.pipeline.run(spec)` picks this runner or
the Ray one (`training.running.distributed`) and exports afterwards when the spec asks. Tests and
benchmarks call it directly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from training.errors import WaldoError
from training.models import get_model_info
from training.running.finetune import finetune_callbacks
from training.running.steps import (
    TrainResult,
    build_trainer,
    default_run_name,
    log_pictures,
    monitor_of,
    open_run,
    prepare,
    provenance_params,
    resolve_locations,
    run_logger,
    split_overlap_tags,
    standard_callbacks,
)
from training.spec import TrainSpec
from training.tracking import storage

BEST_ARTIFACT = f"{storage.CHECKPOINT_ARTIFACT_DIR}/best.ckpt"


def train(
    spec: TrainSpec, *, callbacks: Sequence[Callback] = (), parent_run_id: str | None = None
) -> TrainResult:
    """Fit the spec's network on its data, test the best checkpoint, and track it all in MLflow.

    Checkpoints (the best by the monitored metric, and the last) go to
    `<storage>/<run id>/checkpoints/`, a local folder or a bucket alike; the best one is also
    logged as the run artifact `best/best.ckpt`, and both places are recorded on the run
    (`training.tracking.storage`). MLflow gets the spec as params, per-epoch train/val loss and
    accuracy, test metrics, the resolved spec, and learning-curve, confusion-matrix and filter
    plots.
    """
    if spec.workers > 0:
        raise WaldoError(f"train() runs in this process; workers={spec.workers} runs on Ray "
                         "(training.running.pipeline.run picks the runner)")
    spec = resolve_locations(spec)
    name = default_run_name(spec)
    get_model_info(spec.model)  # fail on a bad name before loading any data
    monitor, mode = monitor_of(spec)
    root = spec.storage
    dm, task = prepare(spec)
    with open_run(spec, name, parent_run_id=parent_run_id, tags=split_overlap_tags(dm),
                  params=provenance_params(task)) as run:
        run_dir = storage.join(root, run.run_id)
        run.set_tags({"waldo.storage_path": run_dir})
        # Lightning writes through fsspec, so a dirpath in a bucket works like a folder.
        checkpoint = ModelCheckpoint(dirpath=storage.join(run_dir, "checkpoints"), filename="best",
                                     monitor=monitor, mode=mode, save_last=True)
        trainer = build_trainer(spec, callbacks=[checkpoint, *callbacks,
                                                 *standard_callbacks(spec, run, dm),
                                                 *finetune_callbacks(spec)],
                                logger=run_logger(spec, run), root=run_dir)
        trainer.fit(task, datamodule=dm)
        trainer.test(task, datamodule=dm, ckpt_path="best", verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        best = checkpoint.best_model_path
        with tempfile.TemporaryDirectory() as tmp:
            run.log_artifact(storage.fetch(best, tmp), storage.CHECKPOINT_ARTIFACT_DIR)
        storage.record_best_checkpoint(run, best, BEST_ARTIFACT)
        log_pictures(run, task, dm)
    return TrainResult(run.run_id, run.experiment_id, run.tracking_uri, best, metrics, run.ui_hint)


__all__ = ["TrainResult", "train"]
