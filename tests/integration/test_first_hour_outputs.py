"""What a new user sees of a run: the MLflow link Waldo prints, opened in a real browser on a
real `mlflow server`, lands on the model-training view; `waldo compare` prints its parent run's
link; a run without a progress bar prints a line per epoch with that epoch's metrics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from support.browser import chromium

from training.tracking.runs import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, start_run
from waldo.cli import main

VIEW = "?workflowType=machine_learning"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    """Headless Chromium with a new profile: no local storage, so MLflow's UI starts from its
    own default view (GenAI) and only the link can ask for another."""
    with chromium(tmp_path, window="1400,1000") as driver:
        yield driver


def test_the_printed_link_opens_the_runs_view(mlflow_server, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    with start_run("ui-link", run_name="ui-link-run", tracking_uri=mlflow_server,
                   system_metrics=False) as run:
        run.log_metrics({"val_acc": 0.5}, step=0)
    experiment = MlflowClient(mlflow_server).get_experiment(run.experiment_id)
    assert experiment.tags.get(EXPERIMENT_KIND_TAG) == MODEL_TRAINING_KIND

    link = run.ui_hint
    assert link.startswith(mlflow_server) and link.endswith(VIEW), link
    browser.get(link)

    def body(driver) -> str:
        return driver.find_element("tag name", "body").text

    # The run's page, with the sidebar of one of the two views: model training lists the Model
    # registry; GenAI lists Observability (its traces overview) instead.
    WebDriverWait(browser, 90).until(
        lambda d: "ui-link-run" in body(d) and ("Model registry" in body(d) or "Observability" in body(d)))
    text = body(browser)
    assert "val_acc" in text, text
    assert "Model registry" in text and "Observability" not in text, text


@pytest.mark.trains
def test_compare_prints_the_link_of_its_parent_run(mlflow_server, in_tmp, capsys):
    assert main(["compare", "mlp", "--data", "digits", "--epochs", "1", "--batch-size", "256",
                 "--tracking-uri", mlflow_server, "--experiment", "compare-link"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"see the comparison: (\S+)/#/experiments/(\w+)/runs/(\w+)(\S*)", out)
    assert found, out
    base, experiment_id, parent_id, view = found.groups()
    assert base == mlflow_server and view == VIEW, out
    client = MlflowClient(mlflow_server)
    children = client.search_runs([experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'")
    assert [c.data.params["model"] for c in children] == ["mlp"]
    child_link = f"{mlflow_server}/#/experiments/{experiment_id}/runs/{children[0].info.run_id}{VIEW}"
    assert f"see the run: {child_link}" in out, out
    # one line per epoch instead of a progress bar (the output is not a terminal)
    assert re.search(r"^epoch 1/1: train_acc=\S+ train_loss=\S+ val_acc=\S+ val_loss=\S+$", out, re.M), out


@pytest.mark.trains
@pytest.mark.parametrize("max_epochs, max_lines, stop_after, printed", [
    (7, 3, None, [1, 3, 6, 7]),  # every 3rd for about 3 lines, the first and the last
    (10, 5, 5, [1, 2, 4, 5]),  # every 2nd; stopped after the 5th, which is printed too
])
def test_epoch_lines_show_each_epochs_own_metrics(capsys, tmp_path, max_epochs, max_lines,
                                                  stop_after, printed):
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from training.running.callbacks import EpochLines

    class Marked(pl.LightningModule):
        """Logs its epoch number as a training metric where a task does (its own
        on_train_epoch_end, which Lightning calls after the callbacks')."""

        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def on_train_epoch_end(self):
            self.log("train_mark", float(self.current_epoch + 1))
            if stop_after is not None and self.current_epoch + 1 == stop_after:
                self.trainer.should_stop = True

        def validation_step(self, batch, batch_idx):
            self.log("val_mark", float(self.current_epoch + 1))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[EpochLines(max_lines=max_lines)],
                         default_root_dir=tmp_path)
    trainer.fit(Marked(), data, data)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert lines == [f"epoch {n}/{max_epochs}: train_mark={n:.4f} val_mark={n:.4f}" for n in printed]
