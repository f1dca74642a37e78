"""Jobs on Ray Job Submission. Ray is the record: a job is a Ray submission whose metadata
says it is Waldo's, with its kind and validated spec; nothing else is stored here.

The entrypoint is fixed (training.spec.JOB_ENTRYPOINT) and the spec travels as data in the
job's environment, so no user text ever reaches a shell. MLflow is only ever the server's
(`WALDO_JOBS_TRACKING_URI`): a job's environment gets it, and runs are looked up there, never in
a store that a job's spec names (listing jobs must not open, or create, a database at a path
someone wrote into a spec).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from services.jobs.settings import JobsSettings
from training.spec import JOB_ENTRYPOINT, JOB_ENV, JOB_RESULT_PREFIX, check_run_name

META_KIND, META_SPEC = "waldo_kind", "waldo_spec"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class ClusterUnavailable(Exception):
    """The Ray dashboard cannot be reached (503)."""


class UnknownJob(Exception):
    """No Waldo job has this id (404)."""


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat() if ms else None


def parse_result(logs: str) -> dict[str, Any] | None:
    for line in reversed(logs.splitlines()):
        if line.startswith(JOB_RESULT_PREFIX):
            try:
                return json.loads(line[len(JOB_RESULT_PREFIX):])
            except ValueError:
                return None
    return None


def _spec_of(metadata: dict[str, str]) -> dict[str, Any]:
    """The spec a job was submitted with; {} when its metadata holds none we can read (a job
    submitted to Ray by other means)."""
    try:
        spec = json.loads(metadata.get(META_SPEC, "{}"))
    except ValueError:
        return {}
    return spec if isinstance(spec, dict) else {}


def ray_client(address: str):
    """Ray's job-submission client for the dashboard at `address` (imported here: Ray is slow
    to import, and the app must start without touching it)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def mlflow_client(tracking_uri: str):
    """MLflow's client for the server's tracking URI (imported here, for the same reason)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


class RayJobs:
    """Blocking calls (Ray's client uses requests): the routes run them in a thread pool.

    `connect(address)` returns the job-submission client (tests pass one that returns an
    in-process fake); it is called again after a connection error. `tracking(uri)` returns an
    MLflow client; it is only ever given the settings' tracking URI.
    """

    def __init__(self, settings: JobsSettings, connect: Callable[[str], Any] = ray_client,
                 tracking: Callable[[str], Any] = mlflow_client):
        self.settings = settings
        self._connect = connect
        self._tracking = tracking
        self._client = None
        self._results: dict[str, dict[str, Any] | None] = {}  # finished jobs' WALDO_RESULT
        self._run_urls: dict[str, str | None] = {}  # run id -> MLflow UI link; runs never move

    @property
    def client(self):
        if self._client is None:
            try:
                self._client = self._connect(self.settings.ray_address)
            except Exception as exc:  # ConnectionError, RuntimeError from Ray's version check
                raise ClusterUnavailable(f"Ray cluster at {self.settings.ray_address} is unreachable: "
                                         f"{' '.join(str(exc).split())[:300]}") from None
        return self._client

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:  # Ray's SDK turns every HTTP error into a RuntimeError
            text = " ".join(str(exc).split())
            if "does not exist" in text or "not found" in text.lower():
                raise UnknownJob(text) from None
            raise ClusterUnavailable(f"the Ray cluster at {self.settings.ray_address} refused: "
                                     f"{text[:300]}") from None
        except OSError as exc:  # requests' ConnectionError is an OSError
            self._client = None
            raise ClusterUnavailable(f"Ray cluster at {self.settings.ray_address} is unreachable: "
                                     f"{exc}") from None

    def ping(self) -> None:
        self._call(lambda: self.client.list_jobs())

    def submit(self, kind: str, spec: dict[str, Any], by: str | None = None) -> str:
        """Submit a job; `by` (the caller, `jobs-api:<user>`) becomes its WALDO_USER, which a
        promotion records in the alias history."""
        job_id = f"waldo-{kind}-{secrets.token_hex(5)}"
        env = {JOB_ENV: json.dumps({"kind": kind, "spec": spec})}
        if by is not None:
            env["WALDO_USER"] = by
        if self.settings.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.settings.tracking_uri
        deadline = time.monotonic() + 30
        while True:
            try:
                self._call(self.client.submit_job, entrypoint=JOB_ENTRYPOINT, submission_id=job_id,
                           runtime_env={"env_vars": env},
                           entrypoint_num_cpus=self.settings.entrypoint_num_cpus,
                           metadata={META_KIND: kind, META_SPEC: json.dumps(spec)})
                return job_id
            except ClusterUnavailable as exc:
                # A node's job agent starts a little after the dashboard answers.
                if "try again later" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def _details(self, job_id: str):
        info = self._call(self.client.get_job_info, job_id)
        if META_KIND not in (info.metadata or {}):
            raise UnknownJob(job_id)
        return info

    def describe(self, info) -> dict[str, Any]:
        status = str(getattr(info.status, "value", info.status))
        spec = _spec_of(info.metadata)
        job = {
            "id": info.submission_id, "submission_id": info.submission_id, "ray_job_id": info.job_id,
            "kind": info.metadata[META_KIND], "status": status, "message": info.message,
            "submitted_at": _iso(info.start_time), "ended_at": _iso(info.end_time),
            "duration_s": round((info.end_time - info.start_time) / 1000, 1)
            if info.end_time and info.start_time else None,
            "spec": spec, "result": None, "mlflow_run_id": None, "mlflow_run_url": None, "model": None,
        }
        result = self._result(info.submission_id, status)
        run_id = (result or {}).get("run_id") or self._find_run(spec)
        if result:
            job["result"] = result
            if result.get("model_version"):
                keys = ("model_name", "model_version", "model_uri", "alias")
                job["model"] = {k: result.get(k) for k in keys}
        if run_id:
            job["mlflow_run_id"] = run_id
            job["mlflow_run_url"] = self._run_url(run_id)
        return job

    def _result(self, job_id: str, status: str) -> dict[str, Any] | None:
        if status != "SUCCEEDED":
            return None
        if job_id not in self._results:
            self._results[job_id] = parse_result(self._call(self.client.get_job_logs, job_id))
        return self._results[job_id]

    def _find_run(self, spec: dict[str, Any]) -> str | None:
        """A running train or sweep job's MLflow run, found by the run name the API gave it, in
        the server's MLflow (whatever the spec says)."""
        if spec.get("run"):
            return spec["run"]
        uri, name = self.settings.tracking_uri, spec.get("run_name")
        if not uri or not isinstance(name, str):
            return None
        try:
            check_run_name(name)  # it goes into a filter string below
        except ValueError:
            return None
        try:
            client = self._tracking(uri)
            experiment = client.get_experiment_by_name(spec.get("experiment", "waldo"))
            if experiment is None:
                return None
            runs = client.search_runs([experiment.experiment_id],
                                      filter_string=f"attributes.run_name = '{name}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
            return runs[0].info.run_id if runs else None
        except Exception:  # MLflow down or not there yet: the link comes later
            return None

    def _run_url(self, run_id: str) -> str | None:
        if run_id in self._run_urls:  # one MLflow call per run, not one per listing
            return self._run_urls[run_id]
        url = self._link(run_id)
        if url is None or "/experiments/" in url:  # not the fallback of an MLflow that was down
            self._run_urls[run_id] = url
        return url

    def _link(self, run_id: str) -> str | None:
        """The run's page in MLflow's UI, in its model-training view (`?workflowType=
        machine_learning`: MLflow 3's UI opens its GenAI view without it), as
        `training.tracking.runs.run_link` writes it."""
        uri = self.settings.tracking_uri
        base = self.settings.mlflow_ui_url or uri
        if not base or not base.startswith("http"):
            return None
        view = "?workflowType=machine_learning"
        if not uri:
            return f"{base.rstrip('/')}/#/runs/{run_id}{view}"
        try:
            experiment_id = self._tracking(uri).get_run(run_id).info.experiment_id
        except Exception:
            return f"{base.rstrip('/')}/#/runs/{run_id}{view}"
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}{view}"

    def get(self, job_id: str) -> dict[str, Any]:
        return self.describe(self._details(job_id))

    def list(self) -> list[dict[str, Any]]:
        jobs = [j for j in self._call(self.client.list_jobs) if META_KIND in (j.metadata or {})]
        jobs.sort(key=lambda j: j.start_time or 0, reverse=True)
        return [self.describe(j) for j in jobs]

    def logs(self, job_id: str) -> str:
        self._details(job_id)
        return self._call(self.client.get_job_logs, job_id)

    def stop(self, job_id: str) -> dict[str, Any]:
        info = self._details(job_id)
        status = str(getattr(info.status, "value", info.status))
        if status in TERMINAL:
            return {"id": job_id, "stopped": False, "status": status}
        stopped = self._call(self.client.stop_job, job_id)
        return {"id": job_id, "stopped": bool(stopped), "status": "STOPPING" if stopped else status}
