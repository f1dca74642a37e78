"""Starting a run from an earlier one (`--init-from`) against a real `mlflow server`, and
training with `--freeze backbone` / `--unfreeze-at-epoch` (tests/unit/test_pretrained.py has
the fast checks of weight loading)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torchvision
from support import PUBLISHED_CNN, REPO_ROOT, clean_env, user_error_line, waldo_main

from training.running.steps import prepare
from training.spec import TrainSpec
from training.tasks import load_task


def _calibrated_resnet18(path) -> dict[str, torch.Tensor]:
    """torchvision's resnet18 with BatchNorm statistics of real activations (random-init
    statistics, mean 0 and variance 1, let a frozen network's activations blow up)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average
    with torch.no_grad():
        net(torch.rand(64, 3, 32, 32))
    torch.save(net.state_dict(), path)
    return net.state_dict()


def _last(result) -> dict[str, torch.Tensor]:
    last = os.path.join(os.path.dirname(result.best_checkpoint), "last.ckpt")
    return load_task(last).net.state_dict()


@pytest.mark.trains
@pytest.mark.parametrize("unfreeze", [None, 1])
def test_freeze_backbone_trains_only_the_head(in_tmp, unfreeze):
    from training.running.local import train

    loaded = _calibrated_resnet18(in_tmp / "resnet18.pth")
    spec = TrainSpec(model="resnet18", data="digits", image_size=32, weights="resnet18.pth",
                     freeze="backbone", unfreeze_at_epoch=unfreeze, epochs=2, batch_size=256,
                     progress_bar=False)
    after = _last(train(spec))
    assert after["fc.weight"].shape == (10, 512)
    _, fresh = prepare(spec)  # the same seed: the head as it started
    assert not torch.equal(after["fc.weight"], fresh.net.fc.weight)
    conv = "layer3.0.conv1.weight"
    if unfreeze is None:  # conv weights and BatchNorm statistics as loaded
        for key, value in after.items():
            if not key.startswith("fc.") and key != "conv1.weight":
                assert torch.equal(value, loaded[key]), key
    else:  # trained in epoch 1
        assert not torch.equal(after[conv], loaded[conv])
        assert not torch.equal(after["bn1.running_mean"], loaded["bn1.running_mean"])


def test_init_from_a_run_and_a_registered_version(trained_run, mlflow_server, in_tmp):
    from mlflow.tracking import MlflowClient

    source = trained_run(**PUBLISHED_CNN, tracking_uri=mlflow_server)  # registered as cnn@production
    source_net = load_task(str(source.checkpoint)).net.state_dict()
    version = MlflowClient(mlflow_server).get_model_version_by_alias("cnn", "production")
    assert version.run_id == source.run_id
    for value in (source.run_id, "models:/cnn@production", f"models:/cnn/{version.version}"):
        spec = TrainSpec(model="cnn", data="digits", init_from=value, tracking_uri=mlflow_server)
        _, task = prepare(spec)
        for key, tensor in task.net.state_dict().items():
            assert torch.equal(tensor, source_net[key]), (value, key)  # same data: head too
        assert task.hparams.provenance["init_from.run_id"] == source.run_id
    # A classifier starts a localizer: its backbone goes into the localizer's backbone.
    spec = TrainSpec(task="localize", model="cnn", data="localization-digits",
                     init_from=source.run_id, tracking_uri=mlflow_server)
    _, task = prepare(spec)
    for key, tensor in task.net.backbone.state_dict().items():
        assert torch.equal(tensor, source_net[key]), key


@pytest.mark.processes
def test_unknown_init_from_is_one_line_exit_2(mlflow_server, in_tmp, capsys):
    # The first through the console script (`python -m waldo`), the others in this process.
    value = "0123456789abcdef0123456789abcdef"
    proc = subprocess.run(
        [sys.executable, "-m", "waldo", "train", "--init-from", value,
         "--tracking-uri", mlflow_server, "--no-progress-bar"],
        cwd=in_tmp, env={**clean_env(), "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=120)
    assert value in user_error_line(proc.returncode, proc.stderr)
    for value in ("models:/nope@none", "missing.ckpt"):
        status, _, err = waldo_main(capsys, "train", "--init-from", value,
                                    "--tracking-uri", mlflow_server, "--no-progress-bar")
        line = user_error_line(status, err)
        assert value in line or repr(value) in line
