"""Distributed training, recovery and sweeps on a real Ray (local, and two nodes on 127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from training.errors import WaldoError
from training.spec import SweepSpec, TrainSpec

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the in-process tests of this module (2 CPUs, as on CI)."""
    import ray

    from training.distributed import WORKER_ENV

    context = ray.init(num_cpus=2, log_to_driver=False, logging_level="ERROR",
                       runtime_env={"env_vars": WORKER_ENV})
    yield context
    ray.shutdown()


def _history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key),
                                    key=lambda m: (m.timestamp, m.step))]


def test_two_workers_match_one_and_both_ranks_train(local_ray, in_tmp, mlflow_server):
    from training.train import train

    base = dict(model="cnn", data="digits", epochs=12, tracking_uri=mlflow_server,
                experiment="ray-two-workers", progress_bar=False)
    one = train(TrainSpec(**base, workers=1))
    two = train(TrainSpec(**base, workers=2))
    client = MlflowClient(mlflow_server)
    acc_one = client.get_run(one.run_id).data.metrics["test_acc"]
    acc_two = client.get_run(two.run_id).data.metrics["test_acc"]
    assert abs(acc_one - acc_two) <= 0.02, (acc_one, acc_two)
    # Each rank logged how many images it trained on; together they cover the training set.
    rank0 = _history(client, two.run_id, "train_samples_rank0")
    rank1 = _history(client, two.run_id, "train_samples_rank1")
    assert len(rank0) == len(rank1) == 12
    assert min(rank0) > 0 and min(rank1) > 0
    assert rank0[-1] + rank1[-1] >= 1221  # digits' training split, padded to an even share
    tags = client.get_run(two.run_id).data.tags
    assert tags["ray.workers"] == "2" and tags["ray.storage_path"].endswith(tags["ray.run_name"])
    assert any(a.path == "best" for a in client.list_artifacts(two.run_id))


def test_killed_worker_resumes_from_its_checkpoint(local_ray, in_tmp, mlflow_server):
    import ray.util.state

    from training.train import train

    epochs = 8
    spec = TrainSpec(model="cnn", data="digits", epochs=epochs, workers=2, max_failures=2,
                     tracking_uri=mlflow_server, experiment="ray-kill", run_name="kill-me",
                     progress_bar=False)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=train(spec)), daemon=True)
    thread.start()
    client = MlflowClient(mlflow_server)
    experiment = None
    deadline = time.time() + 300
    killed_after = None
    while time.time() < deadline and killed_after is None:
        time.sleep(1)
        experiment = experiment or client.get_experiment_by_name("ray-kill")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        done = _history(client, runs[0].info.run_id, "epoch") if runs else []
        if done and max(done) >= 3:  # a few epochs in, with checkpoints behind us
            workers = ray.util.state.list_actors(
                address=f"http://{local_ray.dashboard_url}",
                filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed_after = max(done)
    assert killed_after is not None, "training never got far enough to kill a worker"
    thread.join(timeout=600)
    assert "result" in outcome, "the job did not finish after the worker was killed"
    run_id = outcome["result"].run_id
    epochs_logged = _history(client, run_id, "epoch")
    assert max(epochs_logged) == epochs
    # The restarted group carried on from the last checkpoint, not from epoch 0.
    after_kill = epochs_logged[epochs_logged.index(killed_after) + 1:]
    assert after_kill and min(after_kill) >= killed_after - 1
    assert client.get_run(run_id).info.status == "FINISHED"


def test_more_workers_than_the_cluster_has_is_refused(local_ray, in_tmp):
    from training.train import train

    with pytest.raises(WaldoError, match="16 workers need 16 CPUs.*has 2 CPUs"):
        train(TrainSpec(model="cnn", workers=16, epochs=1, progress_bar=False))


def test_unknown_search_distribution_and_parameter_are_refused():
    from training.spec import build_spec

    with pytest.raises(WaldoError, match="unknown search distribution 'gaussian'.*loguniform"):
        build_spec(SweepSpec, None, {"search": {"lr": "gaussian(0,1)"}})
    with pytest.raises(WaldoError, match="unknown search parameter 'learning_rate'"):
        build_spec(SweepSpec, None, {"search": {"learning_rate": "uniform(0,1)"}})


def test_sweep_with_asha_stops_a_trial_and_nests_runs(local_ray, in_tmp, mlflow_server):
    from training.sweep import STOPPED_EARLY, sweep

    spec = SweepSpec(model="cnn", data="digits", epochs=4, trials=4, max_concurrent=2,
                     search={"lr": "loguniform(1e-6,1e-1)"}, tracking_uri=mlflow_server,
                     experiment="ray-sweep", progress_bar=False, seed=1)
    result = sweep(spec)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("ray-sweep")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert [p.info.run_id for p in parents] == [result.parent_run_id]
    assert len(children) >= 4
    statuses = [c.data.tags.get("waldo.trial_status") for c in children]
    assert STOPPED_EARLY in statuses, statuses
    assert all(c.data.params.get("lr") for c in children)
    assert all(c.info.status in ("FINISHED", "FAILED") for c in children)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["best.run_id"] in {c.info.run_id for c in children}
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"trials.png", "best_trial.json"} <= artifacts


def test_unreachable_ray_address_is_a_clear_error(tmp_path, waldo):
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    out = subprocess.run([*waldo.command(), "train", "--workers", "1", "--ray-address", "127.0.0.1:1",
                          "--epochs", "1"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cannot connect to Ray at '127.0.0.1:1'" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX shell")
def test_resume_continues_a_job_whose_driver_died(local_ray, in_tmp, mlflow_server):
    """Train, then run `--resume NAME` on the finished job's storage: Ray restores the last
    checkpoint, so no epoch is trained twice and the same MLflow run is continued."""
    from training.distributed import resume
    from training.train import train

    spec = TrainSpec(model="cnn", data="digits", epochs=2, workers=1, run_name="resume-me",
                     tracking_uri=mlflow_server, experiment="ray-resume", progress_bar=False)
    first = train(spec)
    again = resume("resume-me", tracking_uri=mlflow_server)
    assert again.run_id == first.run_id
    client = MlflowClient(mlflow_server)
    assert max(_history(client, first.run_id, "epoch")) == 2
