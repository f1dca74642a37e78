"""A Ray cluster of two nodes on 127.0.0.1, started with `ray start` as an operator would.

Kept apart from test_ray.py: `ray stop` ends every Ray process on the machine, so it must not
run while that module's local Ray is up.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def two_node_cluster(tmp_path):
    """`ray start --head` plus a second `ray start` node, one CPU each, token auth on."""
    # Every node and client of the cluster shares one token (ENVIRONMENT.md: Ray 2.60).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = "6399"
    head = subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=1",
                           "--disable-usage-stats"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert head.returncode == 0, head.stderr
    node = subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                           "--disable-usage-stats"], env=env, capture_output=True, text=True,
                          timeout=180)
    try:
        assert node.returncode == 0, node.stderr
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_two_nodes_get_one_worker_each(two_node_cluster, tmp_path, mlflow_server, waldo):
    address, env = two_node_cluster
    out = subprocess.run(
        [*waldo.command(), "train", "--model", "cnn", "--epochs", "2", "--workers", "2",
         "--ray-address", address, "--tracking-uri", mlflow_server, "--experiment", "two-nodes",
         "--run-name", "two-nodes", "--no-progress-bar"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    client = MlflowClient(mlflow_server)
    run = client.search_runs([client.get_experiment_by_name("two-nodes").experiment_id])[0]
    nodes = {run.data.tags["ray.node.rank0"], run.data.tags["ray.node.rank1"]}
    assert len(nodes) == 2, nodes
