"""RayJobs against an in-process fake of Ray's job-submission client: what is submitted (the
fixed entrypoint, the spec only as data), which jobs are listed and in what order, the result
line read back from the logs, and how a missing job and a missing cluster are reported."""

from __future__ import annotations

import inspect
import json

import pytest
import requests
from ray.job_submission import JobStatus, JobSubmissionClient
from support import FakeJobSubmission, waldo_meta

from services.jobs import ray_jobs
from services.jobs.ray_jobs import ClusterUnavailable, RayJobs, UnknownJob
from services.jobs.settings import JobsSettings
from training.spec import JOB_ENTRYPOINT, JOB_ENV, JOB_RESULT_PREFIX

ADDRESS = "http://ray-head.invalid:8265"  # never dialled: the fake stands in for the client


@pytest.fixture
def fake() -> FakeJobSubmission:
    return FakeJobSubmission()


@pytest.fixture
def jobs(fake) -> RayJobs:
    settings = JobsSettings(token="t" * 16, ray_address=ADDRESS, entrypoint_num_cpus=0.5)
    return RayJobs(settings, connect=lambda address: fake)


def test_the_fake_speaks_the_real_clients_signatures():
    """The fake is only worth its tests while Ray's client takes the same arguments."""
    for name, method in inspect.getmembers(FakeJobSubmission, inspect.isfunction):
        if name.startswith("_") or name in {"add", "fail"}:
            continue
        real = inspect.signature(getattr(JobSubmissionClient, name)).parameters
        for param in inspect.signature(method).parameters.values():
            assert param.name in real, f"JobSubmissionClient.{name} takes no {param.name!r}"
            assert real[param.name].kind == param.kind, (name, param.name)


# --- submit -------------------------------------------------------------------------------------
def test_a_job_runs_the_fixed_entrypoint_and_carries_its_spec_only_as_data(jobs, fake):
    spec = {"model": "cnn; rm -rf ~", "epochs": 1, "run_name": "$(reboot)"}
    job_id = jobs.submit("train", spec)

    job = fake.jobs[job_id]
    assert job_id.startswith("waldo-train-") and job.submission_id == job_id
    assert job.entrypoint == JOB_ENTRYPOINT == "python -m training.jobrunner"
    env = job.runtime_env["env_vars"]
    assert set(env) == {JOB_ENV}
    assert json.loads(env[JOB_ENV]) == {"kind": "train", "spec": spec}
    assert job.metadata == waldo_meta("train", **spec)
    assert fake.submitted[job_id]["entrypoint_num_cpus"] == 0.5


def test_a_job_tracks_to_the_servers_mlflow_whatever_its_spec_says(fake):
    settings = JobsSettings(token="t" * 16, ray_address=ADDRESS, tracking_uri="http://mlflow:5000")
    jobs = RayJobs(settings, connect=lambda address: fake)
    job_id = jobs.submit("export", {"run": "abc", "tracking_uri": "sqlite:////elsewhere.db"})
    env = fake.jobs[job_id].runtime_env["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert fake.jobs[job_id].entrypoint == JOB_ENTRYPOINT


def test_submit_waits_for_a_starting_job_agent_but_not_for_a_refusal(jobs, fake, monkeypatch):
    slept = []
    monkeypatch.setattr(ray_jobs.time, "sleep", slept.append)
    fake.fail("submit_job", RuntimeError("Request failed with status code 503: No available agent "
                                         "to submit job, please try again later."))
    job_id = jobs.submit("train", {"model": "cnn"})
    assert job_id in fake.jobs and slept == [1] and fake.calls.count("submit_job") == 2

    fake.fail("submit_job", RuntimeError("Request failed with status code 500: runtime_env is bad."))
    with pytest.raises(ClusterUnavailable, match="refused: .*runtime_env is bad"):
        jobs.submit("train", {"model": "cnn"})
    assert fake.calls.count("submit_job") == 3 and slept == [1]


# --- list and describe --------------------------------------------------------------------------
def test_listing_shows_only_waldo_jobs_newest_first(jobs, fake):
    fake.add("waldo-train-old", metadata=waldo_meta(), start=1_000)
    fake.add("waldo-sweep-new", metadata=waldo_meta("sweep"), start=3_000)
    fake.add("someone-elses", metadata={"owner": "bob"}, start=4_000)
    fake.add("no-metadata", metadata=None, start=5_000)
    fake.add("waldo-export-mid", metadata=waldo_meta("export", run="r1"), start=2_000)

    listed = jobs.list()
    assert [j["id"] for j in listed] == ["waldo-sweep-new", "waldo-export-mid", "waldo-train-old"]
    assert [j["kind"] for j in listed] == ["sweep", "export", "train"]
    assert listed[1]["spec"] == {"run": "r1"} and listed[1]["mlflow_run_id"] == "r1"


def test_the_result_line_fills_in_run_model_and_timings(jobs, fake):
    result = {"run_id": "0123abcd", "model_name": "cnn", "model_version": "3",
              "model_uri": "models:/cnn/3", "alias": "production", "metrics": {"val_acc": 0.97}}
    logs = "\n".join(["epoch 1 ...", JOB_RESULT_PREFIX + json.dumps({"run_id": "stale"}),
                      "more output", JOB_RESULT_PREFIX + json.dumps(result), ""])
    fake.add("waldo-train-done", metadata=waldo_meta(model="cnn"), status=JobStatus.SUCCEEDED,
             start=0, end=12_340, logs=logs)

    job = jobs.get("waldo-train-done")
    assert job["status"] == "SUCCEEDED" and job["kind"] == "train" and job["spec"] == {"model": "cnn"}
    assert job["result"] == result  # the last result line, not an earlier one
    assert job["mlflow_run_id"] == "0123abcd"
    assert job["model"] == {"model_name": "cnn", "model_version": "3", "model_uri": "models:/cnn/3",
                            "alias": "production"}
    assert job["duration_s"] == 12.3 and job["submitted_at"].startswith("2023-11-14T22:13:20")

    reads = fake.calls.count("get_job_logs")
    jobs.get("waldo-train-done")
    assert fake.calls.count("get_job_logs") == reads == 1  # a finished job's logs are read once


@pytest.mark.parametrize("status, logs", [
    (JobStatus.RUNNING, JOB_RESULT_PREFIX + '{"run_id": "early"}'),  # not trusted before the end
    (JobStatus.FAILED, JOB_RESULT_PREFIX + '{"run_id": "x"}'),
    (JobStatus.SUCCEEDED, "no result line at all"),
    (JobStatus.SUCCEEDED, JOB_RESULT_PREFIX + "{not json"),
])
def test_no_result_without_a_readable_line_of_a_succeeded_job(jobs, fake, status, logs):
    fake.add("waldo-train-x", metadata=waldo_meta(), status=status, logs=logs)
    job = jobs.get("waldo-train-x")
    assert job["result"] is None and job["model"] is None and job["mlflow_run_id"] is None
    assert ("get_job_logs" in fake.calls) == (status == JobStatus.SUCCEEDED)


def test_a_result_without_a_registered_version_has_no_model(jobs, fake):
    fake.add("waldo-sweep-1", metadata=waldo_meta("sweep"), status=JobStatus.SUCCEEDED,
             logs=JOB_RESULT_PREFIX + json.dumps({"run_id": "parent", "best_metric": 0.9}))
    job = jobs.get("waldo-sweep-1")
    assert job["mlflow_run_id"] == "parent" and job["model"] is None


def test_logs_come_back_as_ray_has_them(jobs, fake):
    fake.add("waldo-train-1", metadata=waldo_meta(), logs="line 1\nline 2\n")
    assert jobs.logs("waldo-train-1") == "line 1\nline 2\n"


# --- unknown jobs and a missing cluster --------------------------------------------------------
@pytest.mark.parametrize("action", ["get", "logs", "stop"])
def test_an_unknown_or_foreign_job_is_unknown(jobs, fake, action):
    fake.add("someone-elses", metadata={"owner": "bob"})
    for job_id in ("never-submitted", "someone-elses"):
        with pytest.raises(UnknownJob):
            getattr(jobs, action)(job_id)
    assert "stop_job" not in fake.calls and "get_job_logs" not in fake.calls


def test_an_unreachable_cluster_is_cluster_unavailable_naming_the_address(fake):
    attempts = []

    def refuse(address):
        attempts.append(address)
        raise requests.ConnectionError(f"HTTPConnectionPool: Max retries exceeded\n  ({address})")

    jobs = RayJobs(JobsSettings(token="t" * 16, ray_address=ADDRESS), connect=refuse)
    for call in (jobs.list, jobs.ping, lambda: jobs.submit("train", {})):
        with pytest.raises(ClusterUnavailable, match=f"Ray cluster at {ADDRESS} is unreachable"):
            call()
    assert attempts == [ADDRESS] * 3  # each call tries again; nothing is cached


def test_a_cluster_that_goes_away_is_reconnected_to(fake):
    connects = []
    jobs = RayJobs(JobsSettings(token="t" * 16, ray_address=ADDRESS),
                   connect=lambda address: connects.append(address) or fake)
    jobs.ping()
    fake.fail("list_jobs", requests.ConnectionError("Connection refused"))
    with pytest.raises(ClusterUnavailable, match="unreachable: Connection refused"):
        jobs.list()
    assert jobs.list() == [] and len(connects) == 2


# --- stop -----------------------------------------------------------------------------------------
def test_stop_stops_a_running_job_and_leaves_a_finished_one(jobs, fake):
    fake.add("waldo-train-running", metadata=waldo_meta())
    fake.add("waldo-train-done", metadata=waldo_meta(), status=JobStatus.SUCCEEDED)

    assert jobs.stop("waldo-train-running") == {"id": "waldo-train-running", "stopped": True,
                                                 "status": "STOPPING"}
    assert fake.jobs["waldo-train-running"].status == JobStatus.STOPPED
    assert jobs.stop("waldo-train-done") == {"id": "waldo-train-done", "stopped": False,
                                              "status": "SUCCEEDED"}
    assert fake.calls.count("stop_job") == 1
