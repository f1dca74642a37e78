"""The Ray Train controller's settings a job passes through the driver's environment: an
elastic job gives up on a worker group sooner than a fixed-size one, a value the user set wins,
and nothing stays behind in the environment for the next job of the process."""

from __future__ import annotations

import os

import pytest

from training.running.distributed import _environment, controller_env
from training.running.workerenv import WORKER_ENV
from training.spec import TrainSpec

TIMEOUT = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
CLUSTER = "10.0.0.5:6379"


@pytest.fixture(autouse=True)
def no_ray_train_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith("RAY_TRAIN_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_a_fixed_size_job_waits_for_slow_workers_and_an_elastic_one_gives_up_sooner():
    fixed = controller_env(TrainSpec(model="cnn", workers=2, ray_address=CLUSTER))
    elastic = controller_env(TrainSpec(model="cnn", workers=1, max_workers=2, ray_address=CLUSTER))
    assert fixed == {k: v for k, v in WORKER_ENV.items() if k.startswith("RAY_TRAIN_")}
    assert fixed[TIMEOUT] == "600" and elastic[TIMEOUT] == "60"


def test_only_a_job_on_a_cluster_watches_for_preempted_nodes(monkeypatch):
    assert controller_env(TrainSpec(model="cnn", workers=2))[WATCHER] == "0"  # a local Ray
    assert WATCHER not in controller_env(TrainSpec(model="cnn", workers=2, ray_address=CLUSTER))
    monkeypatch.setenv("RAY_ADDRESS", CLUSTER)
    assert WATCHER not in controller_env(TrainSpec(model="cnn", workers=2))


def test_a_value_in_the_environment_wins(monkeypatch):
    monkeypatch.setenv(TIMEOUT, "20")
    assert controller_env(TrainSpec(model="cnn", workers=1, max_workers=2))[TIMEOUT] == "20"


def test_one_jobs_settings_do_not_stay_for_the_next(monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1")
    with _environment({TIMEOUT: "60", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}):
        assert os.environ[TIMEOUT] == "60"
        assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.2"
    assert TIMEOUT not in os.environ
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1"
