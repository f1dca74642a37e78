"""ClassificationTask without a Trainer: its optimizers and LR schedules. The runs through a
Trainer (one-batch smoke runs, a checkpoint round trip) are tests/integration/test_task_training.py."""

from __future__ import annotations

import pytest
from support.tasks import classification_task as make_task
from support.tasks import digits_module

from training.data.digits import DigitsDataModule


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    return digits_module()


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("schedule", ["none", "cosine", "step"])
def test_optimizer_and_schedule_build(digits, optimizer, schedule):
    task = make_task(digits, "cnn", optimizer=optimizer, lr=0.02, weight_decay=1e-4,
                     momentum=0.7, lr_schedule=schedule, epochs=6, lr_step_size=2, lr_gamma=0.5)
    config = task.configure_optimizers()
    opt = config["optimizer"]
    assert type(opt).__name__.lower() == optimizer
    group = opt.param_groups[0]
    assert group["lr"] == 0.02 and group["weight_decay"] == 1e-4
    if optimizer == "sgd":
        assert group["momentum"] == 0.7
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in task.parameters())
    if schedule == "none":
        assert "lr_scheduler" not in config
        return
    assert config["lr_scheduler"]["interval"] == "epoch"
    sched = config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if schedule == "step":
        assert lrs == pytest.approx([0.02, 0.02, 0.01, 0.01, 0.005, 0.005])
    else:  # cosine over `epochs`: from lr down to 0 at the end
        assert lrs[0] == pytest.approx(0.02) and lrs == sorted(lrs, reverse=True)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
