"""MLflow run lifecycle: one place that opens, fills and closes runs.

Runs are created with `MlflowClient` (no fluent global state), so nested runs, Lightning's
`MLFlowLogger` and Ray workers can all point at the same run by id.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from serving.registry.client import default_tracking_uri
from training.errors import WaldoError, one_line

# The URI asked for, else $MLFLOW_TRACKING_URI, else a SQLite store in the working folder: one
# default for runs, exports and the registry's commands.
resolve_tracking_uri = default_tracking_uri


def quiet_artifact_downloads() -> None:
    """No MLflow progress bars for artifact downloads ("Downloading artifacts: 100%|...") in
    this process, unless the user set MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR: Waldo prints one
    line per step, and in logs (jobs, CI) the bars are noise. MLflow reads the variable at
    each download."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def read_run(client: MlflowClient, run_id: str, tracking_uri: str | None, *, unknown: str,
             unreadable: str, missing_codes: tuple[str, ...] = ("RESOURCE_DOES_NOT_EXIST",)):
    """The MLflow run `run_id`, or a one-line WaldoError: `unknown` when the store has no such
    run (an error code in `missing_codes`), `unreadable` plus the reason when MLflow refuses,
    and a line naming the store when it cannot be reached.

    Every path that downloads a run's artifacts (export, --init-from) reads the run here
    first, so this is where their progress bars are turned off (`quiet_artifact_downloads`)."""
    from mlflow.exceptions import MlflowException

    quiet_artifact_downloads()
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in missing_codes:
            raise WaldoError(unknown) from None
        raise WaldoError(f"{unreadable}: {one_line(exc)}") from None
    except Exception as exc:  # unreachable server, bad URI
        raise WaldoError(f"cannot reach MLflow tracking at {tracking_uri!r}: {one_line(exc)}") from None


def absolute_tracking_uri(uri: str | None = None) -> str:
    """`resolve_tracking_uri`, with a relative SQLite file or store folder made absolute, so
    that processes in other working folders (Ray workers, Tune trials) use the same store."""
    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    if uri.startswith("file:") and not uri.startswith("file:///"):
        return Path(uri.removeprefix("file:")).resolve().as_uri()
    if "://" not in uri and ":" not in uri and not uri.startswith("databricks"):  # a folder
        return Path(uri).resolve().as_uri()
    return uri


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block has ended.

    A KeyboardInterrupt raised in the middle of a write to MLflow's SQLite store can leave that
    write's connection holding the database lock for as long as the process lives: the run can
    then not be closed KILLED, and every later write waits out MLflow's 20 s busy timeout and
    fails with a traceback. The tracking writes of this process (`Run`, `start_run`, the
    Lightning logger of `training.running.steps`) run in this block, so a Ctrl-C lands between
    writes. Only in the main thread, where Python runs signal handlers, and only where Ctrl-C
    raises KeyboardInterrupt (not where it is ignored, as Lightning does while it shuts down)."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    caught: list[tuple[int, Any]] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            previous(*caught[0])


@dataclass
class Run:
    """An open MLflow run and the client that writes to it. Its writes to the tracking store
    are `uninterrupted`; artifacts are files, which a Ctrl-C may cut short."""

    client: MlflowClient
    run_id: str
    experiment_id: str
    tracking_uri: str

    def log_params(self, params: dict[str, Any]) -> None:
        with uninterrupted():
            for key, value in params.items():
                self.client.log_param(self.run_id, key, value)

    def set_tags(self, tags: dict[str, Any]) -> None:
        with uninterrupted():
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, str(value))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        with uninterrupted():
            for key, value in metrics.items():
                self.client.log_metric(self.run_id, key, float(value), step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_figure(self, figure, name: str) -> None:
        """Log a matplotlib figure as a PNG and close it."""
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, figure, name)
        plt.close(figure)

    def log_image_file(self, write, name: str, artifact_path: str | None = None) -> None:
        """Log a PNG produced by `write(path)` (e.g. torchvision's save_image)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            write(path)
            self.log_artifact(path, artifact_path)

    def log_dataset(self, name: str, *, source: str, digest: str, sizes: dict[str, int],
                    context: str = "training") -> None:
        """Record the data set this run trained on as an MLflow dataset input (the run page's
        "Datasets used"): where it came from, a digest of its contents and the size of each
        split (the dataset's profile, and tags `data.<split>_size` for searching runs)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest, source_type=source_type(source),
                          source=json.dumps({"uri": source}),
                          profile=json.dumps({f"{k}_size": v for k, v in sizes.items()}))
        tags = [InputTag(key="mlflow.data.context", value=context)]
        with uninterrupted():
            self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags=tags)])
        self.set_tags({f"data.{k}_size": v for k, v in sizes.items()})

    def metric_history(self, key: str) -> list[float]:
        """Values of `key` in the order they were logged (one per epoch for epoch metrics)."""
        history = self.client.get_metric_history(self.run_id, key)
        return [m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))]

    @property
    def ui_hint(self) -> str:
        """How to open this run in the MLflow UI."""
        return ui_hint(self.tracking_uri, self.experiment_id, self.run_id)


# MLflow's UI (3.x) opens an experiment in its GenAI view (traces) unless the address asks for
# the model-training one; its workflow switch reads this query parameter from the hash route.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
# The tag with which MLflow's UI knows an experiment as model training, not GenAI.
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def run_link(base_url: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI at `base_url`, in the model-training view."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


def ui_hint(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """How to open a run in the MLflow UI: its link on a tracking server, else the `mlflow ui`
    command that serves the store and the link there."""
    if tracking_uri.startswith(("http://", "https://")):
        return run_link(tracking_uri, experiment_id, run_id)
    return (f"mlflow ui --backend-store-uri {tracking_uri}  "
            f"then open {run_link('http://127.0.0.1:5000', experiment_id, run_id)}")


def source_type(source: str) -> str:
    """MLflow's name for the kind of a dataset source: a folder or file, a URL, or code (a
    data set that ships inside a Python package)."""
    if "://" in source:
        return source.split("://", 1)[0]
    return "local" if source.startswith("/") else "code"


# System metrics (`system/cpu_utilization_percentage`, memory, disk, network, GPU where there
# is one) are sampled every this many seconds while a run is open; MLflow's
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it, and
# MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false turns them off.
SYSTEM_METRICS_INTERVAL_S = 10.0
_MONITOR_STOP_TIMEOUT_S = 10.0  # a stuck tracking server must not hold the run open for ever


class _SystemMetrics:
    """MLflow's SystemMetricsMonitor for one run, made harmless: it never raises, stopping it
    waits at most _MONITOR_STOP_TIMEOUT_S, and a run shorter than one interval still gets one
    sample (MLflow's monitor logs only after a full interval, so a 5 s run would have none)."""

    def __init__(self, run_id: str, tracking_uri: str):
        self.monitor = None
        if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() in ("false", "0"):
            return
        try:  # needs psutil; without it the run goes on without system metrics
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # its "Started/Stopping monitoring" lines on every run are noise in the CLI
            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
            self.monitor = SystemMetricsMonitor(
                run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=tracking_uri)
            self.monitor.start()
        except Exception as exc:
            logging.getLogger(__name__).warning("no system metrics for run %s: %s", run_id, exc)
            self.monitor = None

    def stop(self) -> None:
        monitor = self.monitor
        if monitor is None:
            return
        self.monitor = None

        def finish() -> None:
            try:
                monitor.finish()
                if monitor._logging_step == 0:  # not one full interval: log one sample now
                    monitor.collect_metrics()
                    monitor.publish_metrics(monitor.aggregate_metrics())
                    monitor.mlflow_logger.flush()
            except Exception as exc:
                logging.getLogger(__name__).warning("system metrics not logged: %s", exc)

        thread = threading.Thread(target=finish, name="waldo-system-metrics-stop", daemon=True)
        thread.start()
        thread.join(_MONITOR_STOP_TIMEOUT_S)


# A process that SIGTERM stopped exits with this status, as one the signal had ended.
EXIT_SIGTERM = 128 + signal.SIGTERM


class _SigtermAsExit:
    """A SIGTERM handler that raises `SystemExit(EXIT_SIGTERM)` in the main thread, so that
    `finally` blocks and context managers run (the open run ends KILLED) before the process
    exits; Python's default is to die at once, which left runs RUNNING forever.

    While `held()`, a SIGTERM waits, and raises when the hold ends: a run is created and its
    status written under a hold, so the exception never lands where the run exists but
    cannot be closed. Only the first SIGTERM raises: the status must get written; SIGKILL
    remains for a process that must die at once."""

    def __init__(self) -> None:
        self.holds = 0
        self.pending = self.fired = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.pending = True
        self._raise_if_due()

    def _raise_if_due(self) -> None:
        if self.pending and not self.holds and not self.fired:
            self.fired = True
            raise SystemExit(EXIT_SIGTERM)

    @contextmanager
    def held(self) -> Iterator[None]:
        self.holds += 1
        try:
            yield
        finally:
            self.holds -= 1
        self._raise_if_due()


class _NoHandler:
    @contextmanager
    def held(self) -> Iterator[None]:
        yield


@contextmanager
def _sigterm_as_exit() -> Iterator[_SigtermAsExit | _NoHandler]:
    """Install `_SigtermAsExit` while inside, or reuse the one an enclosing run installed.
    Only in the main thread (where Python runs handlers), and only where SIGTERM still has
    its default action: an application's own handler (uvicorn's, Ray's) stays in charge.
    Lightning keeps it beside its own handler during `fit`."""
    current = signal.getsignal(signal.SIGTERM)
    if isinstance(current, _SigtermAsExit):
        yield current
        return
    if threading.current_thread() is not threading.main_thread() or current is not signal.SIG_DFL:
        yield _NoHandler()
        return
    handler = _SigtermAsExit()
    signal.signal(signal.SIGTERM, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _end_run(client: MlflowClient, run_id: str, status: int) -> None:
    """Close a run that an exception is leaving; a tracking server that fails now must not
    hide the error that ended the run."""
    try:
        client.set_terminated(run_id, RunStatus.to_string(status))
    except Exception:  # the exception in flight is the one to report
        pass


def _experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment `name`, created if missing, and tagged as model training for MLflow's UI
    unless it already carries a kind (a user's own tag stays)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return experiment.experiment_id


@contextmanager
def start_run(
    experiment: str,
    *,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    run_id: str | None = None,
    system_metrics: bool = True,
) -> Iterator[Run]:
    """Open a run (nested under `parent_run_id` if given), or reopen `run_id`, and close it
    with the right status: FINISHED; KILLED when the process is stopped (Ctrl-C, SIGTERM, or
    any `SystemExit`: Lightning turns Ctrl-C during `fit` into `sys.exit(1)`, and SIGTERM
    into its SIGTERMException); FAILED on any other exception. No run is left RUNNING.
    While it is open, `system_metrics` samples CPU, memory and GPU use (`_SystemMetrics`)."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        experiment_id = _experiment_id(client, experiment)
    except Exception as exc:  # unreachable server, bad URI, unwritable store
        raise WaldoError(f"cannot reach MLflow tracking at {uri!r}: {exc}") from None
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    with _sigterm_as_exit() as sigterm:
        run: Run | None = None
        monitor: _SystemMetrics | None = None
        try:
            with sigterm.held(), uninterrupted():  # a SIGTERM now raises when the run exists, inside this try
                if run_id is not None:
                    client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                    for key, value in all_tags.items():
                        client.set_tag(run_id, key, value)
                else:
                    run_id = client.create_run(experiment_id, run_name=run_name,
                                               tags=all_tags).info.run_id
                run = Run(client, run_id, experiment_id, uri)
                monitor = _SystemMetrics(run_id, uri) if system_metrics else None
            yield run
        except (KeyboardInterrupt, SystemExit):
            if run is not None:
                with sigterm.held(), uninterrupted():
                    _stop(monitor)
                    _end_run(client, run.run_id, RunStatus.KILLED)
            raise
        except BaseException:
            if run is not None:
                with sigterm.held(), uninterrupted():
                    _stop(monitor)
                    _end_run(client, run.run_id, RunStatus.FAILED)
            raise
        with sigterm.held(), uninterrupted():
            _stop(monitor)
            client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.FINISHED))


def _stop(monitor: _SystemMetrics | None) -> None:
    if monitor is not None:
        monitor.stop()
