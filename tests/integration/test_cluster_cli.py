"""`waldo cluster up|status|down`: a persistent Ray head that `waldo train --workers N` joins,
stopped without touching any other Ray on the machine."""

from __future__ import annotations

import json
import socket
import time

import pytest
from mlflow.tracking import MlflowClient
from support import clean_env, free_port


@pytest.mark.ray
@pytest.mark.trains
def test_up_status_a_job_that_joins_it_and_down(tmp_path, waldo) -> None:
    from training.running.cluster import _session

    env = clean_env(WALDO_CLUSTER_FILE=str(tmp_path / "cluster.json"))
    port, dashboard = free_port(), free_port()
    up = waldo.run("cluster", "up", "--port", str(port), "--dashboard-port", str(dashboard),
                   "--num-cpus", "2", cwd=tmp_path, env=env)
    assert up.returncode == 0, up.stderr
    state = json.loads((tmp_path / "cluster.json").read_text())
    try:
        assert state["address"] == f"127.0.0.1:{port}" and "started" in up.stdout
        assert (tmp_path / "cluster.token").stat().st_mode & 0o077 == 0  # this user's alone
        again = waldo.run("cluster", "up", "--port", str(port), cwd=tmp_path, env=env)
        assert again.returncode == 0 and "already running" in again.stdout
        status = waldo.run("cluster", "status", cwd=tmp_path, env=env)
        assert status.returncode == 0 and "1 node(s), 2 CPUs" in status.stdout, status.stderr

        tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
        job = waldo.run("train", "--model", "cnn", "--data", "digits", "--epochs", "1", "--workers", "1",
                        "--tracking-uri", tracking, "--experiment", "joins", "--no-progress-bar",
                        cwd=tmp_path, env=env, timeout=300)
        assert job.returncode == 0, job.stderr[-3000:]
        client = MlflowClient(tracking)
        run = client.search_runs([client.get_experiment_by_name("joins").experiment_id])[0]
        assert run.data.params["ray_address"] == state["address"]  # it joined the head
    finally:
        stopping = time.monotonic()
        down = waldo.run("cluster", "down", cwd=tmp_path, env=env)
        stopped_in = time.monotonic() - stopping
    assert down.returncode == 0 and "stopped" in down.stdout
    # After a job, Ray's default drain on SIGTERM would wait out its 30 s (a detached actor
    # never lets the node drain); the head stops without it.
    assert stopped_in < 20, stopped_in
    assert _session(state["pid"]) == []  # the head and everything it started are gone
    assert not (tmp_path / "cluster.json").exists()
    gone = waldo.run("cluster", "status", cwd=tmp_path, env=env)
    assert gone.returncode == 1 and "no cluster running" in gone.stdout


def test_up_on_a_port_in_use_is_one_line(tmp_path, waldo) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = waldo.run("cluster", "up", "--port", str(port), "--dashboard-port", str(free_port()),
                        cwd=tmp_path, env=clean_env(WALDO_CLUSTER_FILE=str(tmp_path / "c.json")))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"port {port} is in use" in out.stderr
