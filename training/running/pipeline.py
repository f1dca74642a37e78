"""From a spec to a registered model: pick the runner, train, and export when the spec asks.

`run(spec)` trains in this process (`training.running.local`) or on Ray (`training.running.distributed`),
`run_sweep(spec)` runs a Ray Tune sweep (`training.running.sweep`), and `resume(name)` continues a Ray
job whose driver died. Each ends like `waldo export --run RUN --publish --alias ...` when the
spec sets `export`, `publish` or `alias`: for a sweep, on the best trial's run.

Each runner makes the spec's relative locations absolute before it starts anything
(`training.running.steps.resolve_locations`), so this module does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from training.errors import WaldoError
from training.spec import ExportSpec, SweepSpec, TrainSpec

if TYPE_CHECKING:
    from training.export import ExportResult
    from training.running.steps import TrainResult
    from training.running.sweep import SweepResult


def join_cluster(spec: TrainSpec) -> TrainSpec:
    """A Ray job that names no cluster (no ray_address, no RAY_ADDRESS) joins the head that
    `waldo cluster up` keeps running, if one runs. Called before Ray is imported: Ray reads the
    cluster's token settings (which this sets in the environment) when it is imported."""
    from training.running import cluster
    from training.running.rayinit import named_address

    if named_address(spec.ray_address):
        return spec

    address = cluster.address()
    return spec.model_copy(update={"ray_address": address}) if address else spec


def run(spec: TrainSpec, *, callbacks: Sequence[Any] = (),
        parent_run_id: str | None = None) -> TrainResult:
    """Train `spec` (in-process with `workers=0`, else as a Ray Train job) and export if asked."""
    if spec.workers > 0:
        from training.running.distributed import train_distributed

        spec = join_cluster(spec)
        result = train_distributed(spec, callbacks=callbacks, parent_run_id=parent_run_id)
    else:
        from training.running.local import train

        result = train(spec, callbacks=callbacks, parent_run_id=parent_run_id)
    result.export = export_if_asked(spec, result.run_id, result.tracking_uri)
    return result


def resume(name: str, *, storage_location: str | None = None, tracking_uri: str | None = None,
           ray_address: str | None = None) -> TrainResult:
    """Continue Ray job `name`, whose driver died, from its storage and in its MLflow run.

    Everything else comes from the spec its driver stored beside the checkpoints. Ray restores
    the job's checkpoints and the workers carry on from the latest one; the MLflow run, left
    RUNNING by the dead driver, is reopened and closed as usual, and the export the spec asked
    for follows.
    """
    from training.running.distributed import load_job, train_distributed

    spec, run_id, stored_uri = load_job(name, storage_location)
    update: dict[str, Any] = {"tracking_uri": tracking_uri or stored_uri}
    if storage_location:
        update["storage"] = storage_location
    if ray_address:
        update["ray_address"] = ray_address
    spec = join_cluster(spec.model_copy(update=update))
    result = train_distributed(spec, resume_run_id=run_id)
    result.export = export_if_asked(spec, result.run_id, result.tracking_uri)
    return result


def run_sweep(spec: SweepSpec) -> SweepResult:
    """Run the sweep, then export the best trial's checkpoint when the spec asks."""
    from training.running.sweep import sweep

    result = sweep(join_cluster(spec))
    if spec.exports and not result.best_run_id:
        raise WaldoError(f"sweep run {result.parent_run_id}: the best trial has no MLflow run "
                         "to export")
    result.export = export_if_asked(spec, result.best_run_id, spec.tracking_uri)
    return result


def export_if_asked(spec: TrainSpec, run_id: str | None,
                    tracking_uri: str | None) -> ExportResult | None:
    """With `spec.export` (or `publish`, or `alias`), export the closed run's best checkpoint
    to ONNX, check it and register it, as `waldo export --run RUN_ID` does."""
    if not spec.exports or run_id is None:
        return None
    from training.export import export_run
    from training.export.pipeline import NotPromoted

    export = ExportSpec(run=run_id, publish=spec.publish, alias=spec.alias,
                        tracking_uri=tracking_uri)
    try:
        return export_run(export, train_spec=spec)
    except NotPromoted as exc:
        raise WaldoError(f"run {run_id} trained and was published, but {exc}") from None
    except WaldoError as exc:
        flags = f" --alias {spec.alias}" if spec.alias else " --publish" if spec.publish else ""
        raise WaldoError(f"run {run_id} trained, but its export failed: {exc}; "
                         f"retry with `waldo export --run {run_id}{flags}`") from None


__all__ = ["export_if_asked", "resume", "run", "run_sweep"]
