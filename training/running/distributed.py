"""`train(spec)` on Ray Train: the same steps, run as the per-worker loop of a TorchTrainer.

Distribution adds only Ray's Lightning pieces (RayDDPStrategy, RayLightningEnvironment,
RayTrainReportCallback, prepare_trainer) and resumes from `ray.train.get_checkpoint()`, so a
restarted worker group carries on at the epoch, optimizer and scheduler state it had reached.
The driver owns the MLflow run; workers log into it by id, and only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from training.data import create_datamodule
from training.data.raydata import DATA_CPUS, STREAMED, ShardData, plan
from training.errors import WaldoError
from training.running.rayinit import connect, named_address
from training.running.steps import (
    TrainResult,
    check_split_overlap,
    default_run_name,
    monitor_of,
    open_run,
    resolve_locations,
    split_overlap_tags,
)
from training.running.workerenv import WORKER_ENV
from training.spec import TrainSpec
from training.tracking import storage
from training.tracking.runs import Run

JOB_FILE = "waldo_job.json"  # beside Ray's own state: the spec and MLflow run of the job


ELASTIC_CHECK_S = 15.0  # how often an elastic job looks for room to grow
ELASTIC_RESTARTS = 3  # restarts an elastic job allows at least (--max-failures raises it)
ELASTIC_START_TIMEOUT_S = 60  # an elastic job's wait for a worker group it may not get


def _check_capacity(spec: TrainSpec, data_cpus: float = 0) -> None:
    """Refuse, with a message, a job the cluster can never place (Ray would wait forever);
    `data_cpus` are kept free for the job's Ray Data tasks."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    need_cpu = spec.workers * spec.cpus_per_worker + data_cpus
    need_gpu = spec.workers * spec.gpus_per_worker
    if need_cpu > cpus or need_gpu > gpus:
        data = f" (with {data_cpus:g} for reading the data through Ray Data)" if data_cpus else ""
        raise WaldoError(
            f"{spec.workers} workers need {need_cpu:g} CPUs{data} and {need_gpu:g} GPUs, but the Ray "
            f"cluster has {cpus:g} CPUs and {gpus:g} GPUs; use fewer --workers or smaller "
            "--cpus-per-worker / --gpus-per-worker, or add nodes"
        )


def _strategy():
    """RayDDPStrategy, which leaves a lone worker's model unwrapped.

    DistributedDataParallel with one process still runs its reducer on every step (autograd
    hooks, gradient buckets, a gloo all-reduce with itself) for nothing. With world size 1 the
    model stays as it is; the process group stays too, so all_gather, barriers and broadcasts
    work unchanged, and checkpoints are the same as with DDP (Lightning saves the unwrapped
    module either way).
    """
    from ray.train.lightning import RayDDPStrategy

    class WaldoRayDDPStrategy(RayDDPStrategy):
        def configure_ddp(self) -> None:
            if self.world_size > 1:
                super().configure_ddp()

    return WaldoRayDDPStrategy()


def _report_callback():
    """RayTrainReportCallback, minus the empty `lightning_checkpoints-*` folder it leaves in
    the system temp folder: it removes each epoch's checkpoint folder after the report, but
    never their parent."""
    from ray.train.lightning import RayTrainReportCallback

    class WaldoRayTrainReportCallback(RayTrainReportCallback):
        def teardown(self, trainer, pl_module, stage: str) -> None:
            shutil.rmtree(self.tmpdir_prefix, ignore_errors=True)

    return WaldoRayTrainReportCallback()


def controller_env(spec: TrainSpec) -> dict[str, str]:
    """The RAY_TRAIN_* settings of this job's Train controller, which Ray Train reads from the
    driver's environment as `fit()` starts the controller. One set in the environment wins.

    Right after a node dies, Ray still counts its CPUs, so an elastic restart may ask for the
    old group size; it must give up on that soon (then it asks again, smaller), not after the
    600 s a fixed-size job waits for slow workers.

    On a local Ray (no address: the job's own, or one this process started) the controller
    starts no preemption watcher, an actor (a process) per job that polls for nodes a cloud is
    about to take away: this machine is the whole cluster."""
    env = {key: value for key, value in WORKER_ENV.items() if key.startswith("RAY_TRAIN_")}
    if spec.max_workers:
        env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(ELASTIC_START_TIMEOUT_S)
    if not named_address(spec.ray_address):
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    return {key: os.environ.get(key, value) for key, value in env.items()}


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ for the block only, so one job's settings never leak into the
    next job this process runs."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What every Ray worker runs: build, fit (resuming if Ray has a checkpoint), test."""
    import ray.train
    from mlflow.tracking import MlflowClient
    from ray.train.lightning import RayLightningEnvironment, RayTrainReportCallback, prepare_trainer

    from training.running.finetune import finetune_callbacks
    from training.running.steps import (
        build_trainer,
        log_pictures,
        prepare,
        provenance_params,
        run_logger,
        standard_callbacks,
    )

    spec = TrainSpec.model_validate(config["spec"])
    # Temporary files of this job (Lightning's, and the report callback's checkpoint folders)
    # go into the job's scratch folder, which the driver removes even when a process of the job
    # is killed (a Tune trial that ASHA stops).
    os.makedirs(config["scratch"], exist_ok=True)
    tempfile.tempdir = config["scratch"]
    run = Run(MlflowClient(config["tracking_uri"]), config["run_id"], config["experiment_id"],
              config["tracking_uri"])
    ingest = config.get("ingest")
    if ingest is not None:  # Ray Data feeds this worker (training.data.raydata)
        world = ray.train.get_context().get_world_size()
        dm, task = prepare(spec, ShardData(create_datamodule(spec.data_spec()), ingest, world))
    else:
        dm, task = prepare(spec)
    # The driver opened the run before any worker built the network: rank 0 logs where the
    # network started (logging the same values again on a restarted worker is allowed).
    if ray.train.get_context().get_world_rank() == 0 and provenance_params(task):
        run.log_params(provenance_params(task))
    # The standard callbacks come first: their stop on a nan or inf loss must see an epoch
    # before the report callback checkpoints it.
    callbacks = [*standard_callbacks(spec, run, dm), _report_callback(),
                 *finetune_callbacks(spec), *config.get("callbacks", [])]
    with tempfile.TemporaryDirectory(prefix="waldo-") as root:
        trainer = build_trainer(
            spec, callbacks=callbacks, logger=run_logger(spec, run), root=root,
            devices="auto", accelerator="gpu" if spec.gpus_per_worker > 0 else "cpu",
            strategy=_strategy(), plugins=[RayLightningEnvironment()],
            enable_checkpointing=False,  # RayTrainReportCallback checkpoints every epoch
            enable_progress_bar=False,
        )
        trainer = prepare_trainer(trainer)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            trainer.fit(task, datamodule=dm)
        else:
            with checkpoint.as_directory() as folder:
                trainer.fit(task, datamodule=dm,
                            ckpt_path=str(Path(folder) / RayTrainReportCallback.CHECKPOINT_NAME))
        trainer.test(task, datamodule=dm, verbose=False)
    # Record where each rank ran, so a multi-node job can be checked from its MLflow run.
    import torch.distributed as dist

    nodes = [ray.get_runtime_context().get_node_id()]
    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, nodes[0])
        nodes = gathered
    if trainer.is_global_zero:
        run.set_tags({f"ray.node.rank{rank}": node for rank, node in enumerate(nodes)})
        log_pictures(run, task, dm)


def _user_error(error: BaseException) -> WaldoError | None:
    """The user error (a WaldoError, such as a diverged loss) that failed a worker, if one
    did: the driver raises it as its own, so the CLI prints its one line."""
    failures = getattr(error, "worker_failures", None) or {}
    return next((failures[rank] for rank in sorted(failures)
                 if isinstance(failures[rank], WaldoError)), None)


@contextmanager
def scratch_folder(given: str | None = None) -> Iterator[str]:
    """A local folder for a job's temporary files: `given` as it is, else a new one that is
    removed afterwards."""
    if given is not None:
        yield given
        return
    folder = tempfile.mkdtemp(prefix="waldo-ray-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_job_file(root: str, name: str, payload: dict[str, Any]) -> None:
    fs, path = storage.filesystem(storage.join(root, name, JOB_FILE))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(json.dumps(payload))


def load_job(name: str, storage_location: str | None = None) -> tuple[TrainSpec, str, str]:
    """(spec, MLflow run id, tracking URI) of job `name`, as its driver stored them."""
    root = storage.storage_root(storage_location)
    fs, path = storage.filesystem(storage.join(root, name, JOB_FILE))
    try:
        with fs.open(path, "r") as f:
            job = json.loads(f.read())
    except FileNotFoundError:
        raise WaldoError(f"no job named {name!r} under storage {root!r} (looked for "
                         f"{name}/{JOB_FILE}); pass the --storage it ran with") from None
    return TrainSpec.model_validate(job["spec"]), job["run_id"], job["tracking_uri"]


def train_distributed(
    spec: TrainSpec,
    *,
    callbacks: Sequence[Any] = (),
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
    ray_callbacks: Sequence[Any] = (),
    on_start: Callable[[Run, str], None] | None = None,
    scratch: str | None = None,
) -> TrainResult:
    """Run `spec` as a Ray Train job of `spec.workers` workers, tracked in one MLflow run.

    `resume_run_id` continues an existing MLflow run (a job whose driver died, see
    `training.running.pipeline.resume`); Ray itself restores the job's checkpoint state from
    `storage/<run_name>`, and the workers carry on from the latest checkpoint. `scratch` is a
    local folder for the job's temporary files (default: a new one, removed at the end).
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.lightning import RayTrainReportCallback
    from ray.train.torch import TorchTrainer

    name = default_run_name(spec)
    spec = resolve_locations(spec).model_copy(update={"run_name": name})
    monitor, mode = monitor_of(spec)
    streamed = spec.data in STREAMED
    data_cpus = DATA_CPUS if streamed else 0
    connect(spec.ray_address, min_cpus=spec.workers * spec.cpus_per_worker + data_cpus)
    _check_capacity(spec, data_cpus)
    ingest, datasets, overlap = None, None, {}
    if streamed:  # decoded by Ray Data tasks, each worker reading its own shard
        source = create_datamodule(spec.data_spec())
        ingest, datasets = plan(source, spec.augment, spec.random_erasing)
        check_split_overlap(spec, source)  # the workers' data modules see no images to compare
        overlap = split_overlap_tags(source)
    root = spec.storage
    tags = {"ray.run_name": name, "ray.storage_path": storage.join(root, name),
            "ray.workers": spec.workers, **overlap}
    with (scratch_folder(scratch) as scratch,
          open_run(spec, name, parent_run_id=parent_run_id, run_id=resume_run_id, tags=tags) as run):
        if resume_run_id is None:
            _write_job_file(root, name, {"spec": spec.model_dump(mode="json"),
                                         "run_id": run.run_id,
                                         "tracking_uri": run.tracking_uri})
        if on_start is not None:
            on_start(run, name)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"spec": spec.model_dump(mode="json"), "run_id": run.run_id,
                               "experiment_id": run.experiment_id,
                               "tracking_uri": run.tracking_uri, "callbacks": list(callbacks),
                               "scratch": scratch, "ingest": ingest},
            datasets=datasets,
            dataset_config=DataConfig(datasets_to_split="all") if datasets else None,
            scaling_config=ScalingConfig(
                # Elastic (MIN-MAX): Ray Train starts with what it can place, grows the group as
                # nodes join (checked every ELASTIC_CHECK_S) and restarts it smaller, from the last
                # checkpoint, when a node leaves.
                num_workers=(spec.workers, spec.max_workers) if spec.max_workers else spec.workers,
                elastic_resize_monitor_interval_s=ELASTIC_CHECK_S,
                use_gpu=spec.gpus_per_worker > 0,
                resources_per_worker={"CPU": spec.cpus_per_worker,
                                      **({"GPU": spec.gpus_per_worker} if spec.gpus_per_worker else {})},
            ),
            run_config=RunConfig(
                name=name, storage_path=root,
                # An elastic job outlives the loss of a node (a restart): that is what it is for.
                failure_config=FailureConfig(max_failures=max(spec.max_failures, ELASTIC_RESTARTS)
                                             if spec.max_workers else spec.max_failures),
                checkpoint_config=CheckpointConfig(checkpoint_score_attribute=monitor,
                                                   checkpoint_score_order=mode),
                callbacks=list(ray_callbacks),
            ),
        )
        try:
            with _environment(controller_env(spec)):
                result = trainer.fit()
            if result.error is not None:  # Ray Train v2 raises it; earlier versions returned it
                raise result.error
        except Exception as exc:
            user_error = _user_error(exc)
            if user_error is None:
                raise
            raise user_error from None
        best = result.get_best_checkpoint(monitor, mode) or result.checkpoint
        best_name = RayTrainReportCallback.CHECKPOINT_NAME
        with best.as_directory() as folder:
            run.log_artifact(Path(folder) / best_name, storage.CHECKPOINT_ARTIFACT_DIR)
        metrics = dict(run.client.get_run(run.run_id).data.metrics)  # rank 0 logged test_* too
        # Ray's checkpoint path has no scheme; the storage root says which filesystem it is on.
        location = storage.join(storage.with_scheme(root, best.path), best_name)
        storage.record_best_checkpoint(run, location,
                                       f"{storage.CHECKPOINT_ARTIFACT_DIR}/{best_name}")
    return TrainResult(run.run_id, run.experiment_id, run.tracking_uri, location, metrics,
                       run.ui_hint)


__all__ = ["load_job", "train_distributed", "train_loop_per_worker"]
