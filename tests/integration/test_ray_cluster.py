"""A Ray cluster of two nodes on 127.0.0.1, started with `ray start` as an operator would.

The nodes run on free ports and are stopped by ending their own process groups
(`support.ray_cluster`), so this can run beside any other Ray on the machine.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from support import ray_cluster

pytestmark = pytest.mark.slow


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head and one worker node, one CPU each, token auth on."""
    with ray_cluster(tmp_path / "ray", workers=1, num_cpus=1) as cluster:
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
