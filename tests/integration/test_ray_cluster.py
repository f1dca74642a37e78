"""A Ray cluster of two nodes on 127.0.0.1, started with `ray start` as an operator would.

The nodes run on free ports and are stopped by ending their own process groups
(`support.ray_cluster`), so this can run beside any other Ray on the machine.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from support import ray_cluster

pytestmark = [pytest.mark.ray, pytest.mark.trains]


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    """A head and one worker node, one CPU each, token auth on: the module's tests share it, the
    one that kills its worker node last. The head checks its nodes every second and gives up on
    one after 5 missed checks (Ray's defaults: 3 s and 5), so a killed node is found dead in
    about 5 s instead of 15."""
    health = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
    with ray_cluster(tmp_path_factory.mktemp("ray"), workers=1, num_cpus=1, env=health) as cluster:
        yield cluster


def test_two_nodes_get_one_worker_each(two_node_cluster, tmp_path, mlflow_server, waldo):
    out = waldo.run("train", "--model", "cnn", "--data", "digits", "--epochs", "2", "--workers", "2",
                    "--ray-address", two_node_cluster.address, "--tracking-uri", mlflow_server,
                    "--experiment", "two-nodes", "--run-name", "two-nodes", "--no-progress-bar",
                    cwd=tmp_path, env=two_node_cluster.env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    client = MlflowClient(mlflow_server)
    run = client.search_runs([client.get_experiment_by_name("two-nodes").experiment_id])[0]
    nodes = {run.data.tags["ray.node.rank0"], run.data.tags["ray.node.rank1"]}
    assert len(nodes) == 2, nodes


def test_elastic_job_keeps_training_when_a_node_dies(two_node_cluster, tmp_path, mlflow_server,
                                                     waldo):
    """`--workers 1-2` on two nodes: two workers, then one after the second node is killed
    (its raylet and everything on it), resuming from the last checkpoint; every epoch trains.
    Last in this module: the cluster has one node left after it."""
    import time

    from support import wait_until

    epochs, cluster = 6, two_node_cluster
    # The cluster finds a dead node in about 5 s, so the restart's wait for the old group size
    # (60 s by default for an elastic job) can be 20 s: the job still gives up on it, sooner.
    env = {**cluster.env, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20"}
    job = waldo.start("train", "--model", "cnn", "--data", "digits", "--epochs", str(epochs),
                      "--workers", "1-2", "--ray-address", cluster.address, "--tracking-uri",
                      mlflow_server, "--experiment", "elastic", "--run-name", "elastic",
                      "--augment", "none", "--no-progress-bar", cwd=tmp_path, env=env)
    client = MlflowClient(mlflow_server)

    def workers_logged() -> list[float]:
        experiment = client.get_experiment_by_name("elastic")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if not runs:
            return []
        return [m.value for m in client.get_metric_history(runs[0].info.run_id, "workers")]

    try:
        wait_until(lambda: len(workers_logged()) >= 2, what="two epochs on two workers",
                   timeout=300, proc=job)
        assert job.poll() is None, job.stderr.read()[-3000:]
        cluster.kill_node(0)
        started = time.monotonic()
        out, err = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err[-3000:]
    run = client.search_runs([client.get_experiment_by_name("elastic").experiment_id])[0]
    history = sorted(client.get_metric_history(run.info.run_id, "workers"), key=lambda m: m.step)
    counts = [m.value for m in history]
    assert counts[0] == 2 and counts[-1] == 1, counts  # the group shrank and kept going
    trained = {int(m.value) for m in client.get_metric_history(run.info.run_id, "epoch")}
    assert set(range(epochs)) <= trained, trained  # every epoch, the interrupted one again
    assert run.info.status == "FINISHED" and run.data.metrics["test_acc"] > 0.5
    print(f"\nelastic: workers per epoch {counts}; done {time.monotonic() - started:.0f} s after the kill")
