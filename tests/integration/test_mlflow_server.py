"""train() and compare() against a real MLflow tracking server, read back with MlflowClient."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from PIL import Image

from training.commands.compare import compare
from training.spec import TrainSpec
from training.tasks import ClassificationTask

pytestmark = pytest.mark.trains

EPOCH_METRICS = ["train_loss", "val_loss", "train_acc", "val_acc", "data_wait_fraction"]


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    """Every file artifact of the run, recursively."""
    out = []
    for info in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, info.path) if info.is_dir else [info.path]
    return out


def test_run_is_on_the_server_and_finished(mlflow_server, tracked_cnn):
    result, work = tracked_cnn.result, tracked_cnn.folder
    client = MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "it"
    assert run.data.tags["waldo.model"] == "cnn"
    assert result.tracking_uri == mlflow_server and result.ui_hint.startswith(mlflow_server)
    # nothing was written to a local store: the working folder has checkpoints only
    assert not (work / "mlflow.db").exists() and not (work / "mlruns").exists()


def test_params_are_the_spec(mlflow_server, tracked_cnn):
    spec, result = tracked_cnn.logged_spec, tracked_cnn.result
    params = MlflowClient(mlflow_server).get_run(result.run_id).data.params
    assert params["model"] == "cnn" and params["epochs"] == "2"
    assert params["lr"] == str(spec.lr) and params["optimizer"] == spec.optimizer
    assert {k: params.get(k) for k in spec.to_params()} == spec.to_params()


def test_one_value_per_epoch(mlflow_server, tracked_cnn):
    result = tracked_cnn.result
    client = MlflowClient(mlflow_server)
    for key in EPOCH_METRICS:
        history = client.get_metric_history(result.run_id, key)
        assert len(history) == 2, f"{key}: {[(m.step, m.value) for m in history]}"
        assert history[0].step < history[1].step
    accs = [m.value for m in client.get_metric_history(result.run_id, "val_acc")]
    assert all(0.0 <= a <= 1.0 for a in accs)
    test_acc = client.get_metric_history(result.run_id, "test_acc")
    assert len(test_acc) == 1
    assert test_acc[0].value == pytest.approx(result.metrics["test_acc"])
    assert test_acc[0].value > 0.3  # 2 epochs of the cnn on digits: far above chance (0.1)


def test_artifacts(mlflow_server, tracked_cnn, tmp_path):
    result = tracked_cnn.result
    client = MlflowClient(mlflow_server)
    paths = artifact_paths(client, result.run_id)
    for name in ["spec.yaml", "learning_curves.png", "confusion_matrix.png",
                 "first_layer_filters.png"]:
        assert name in paths, paths
    for name in ["learning_curves.png", "confusion_matrix.png", "first_layer_filters.png"]:
        local = client.download_artifacts(result.run_id, name, str(tmp_path))
        with Image.open(local) as image:
            assert image.format == "PNG" and min(image.size) > 10


def test_best_checkpoint_is_logged_and_loads(mlflow_server, tracked_cnn, tmp_path):
    result = tracked_cnn.result
    client = MlflowClient(mlflow_server)
    best_file = tracked_cnn.checkpoint
    assert best_file.is_file()
    checkpoints = [p for p in artifact_paths(client, result.run_id) if p.endswith(".ckpt")]
    best = [p for p in checkpoints if Path(p).name == best_file.name]
    assert best, f"best checkpoint {best_file.name} not among {checkpoints}"
    local = client.download_artifacts(result.run_id, best[0], str(tmp_path))
    task = ClassificationTask.load_from_checkpoint(local, map_location="cpu")
    assert task.hparams.model_name == "cnn" and task.hparams.num_classes == 10


def test_spec_artifact_parses_into_the_same_spec(mlflow_server, tracked_cnn, tmp_path):
    spec, result = tracked_cnn.logged_spec, tracked_cnn.result
    local = MlflowClient(mlflow_server).download_artifacts(result.run_id, "spec.yaml",
                                                           str(tmp_path))
    assert TrainSpec.model_validate(yaml.safe_load(Path(local).read_text())) == spec


def test_compare_nests_runs_under_a_parent(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = TrainSpec(data="digits", epochs=2, batch_size=256, tracking_uri=mlflow_server,
                     experiment="it-compare", progress_bar=False)
    parent_id, results = compare(["mlp", "cnn"], spec)
    assert set(results) == {"mlp", "cnn"}

    client = MlflowClient(mlflow_server)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'")
    assert sorted(c.info.run_id for c in children) == sorted(r.run_id for r in results.values())
    assert sorted(c.data.params["model"] for c in children) == ["cnn", "mlp"]
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "val_acc")) == 2
    assert "val_acc_comparison.png" in artifact_paths(client, parent_id)
    assert parent.data.params["models"] == "mlp,cnn"
    for name, result in results.items():
        final = client.get_metric_history(result.run_id, "val_acc")[-1].value
        assert parent.data.metrics[f"{name}.final_val_acc"] == pytest.approx(final)
