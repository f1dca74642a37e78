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
    assert config["lr_scheduler"]["interval"] == "epoch"  # no warmup: once per epoch
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


def lr_trace(schedule: str, *, epochs: int, steps_per_epoch: int, warmup_epochs: int) -> list[float]:
    from torch import nn

    from training.tasks.optim import build_optimizers

    config = build_optimizers(nn.Linear(2, 2).parameters(), optimizer="sgd", lr=0.1,
                              weight_decay=0.0, momentum=0.9, lr_schedule=schedule, epochs=epochs,
                              lr_step_size=1, lr_gamma=0.5, warmup_epochs=warmup_epochs,
                              steps_per_epoch=steps_per_epoch)
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("schedule", ["none", "cosine", "step"])
def test_warmup_rises_linearly_per_step_then_hands_over_to_the_schedule(schedule):
    lrs = lr_trace(schedule, epochs=4, steps_per_epoch=5, warmup_epochs=1)
    assert lrs[0] == pytest.approx(0.001)  # a hundredth of lr
    assert lrs[:6] == sorted(lrs[:6]) and lrs[5] == pytest.approx(0.1)  # 5 steps up to lr
    after = lrs[5:]
    if schedule == "none":
        assert after == pytest.approx([0.1] * 15)
    elif schedule == "cosine":
        assert after == sorted(after, reverse=True) and after[-1] < 0.01
    else:  # halved every epoch of 5 steps, counted from the start of the run
        assert after[5] == pytest.approx(after[0] / 2) and after[10] == pytest.approx(after[0] / 4)


def test_onecycle_rises_over_the_warmup_and_anneals_to_near_zero():
    lrs = lr_trace("onecycle", epochs=5, steps_per_epoch=4, warmup_epochs=2)
    peak = lrs.index(max(lrs))
    assert peak == 7 and max(lrs) == pytest.approx(0.1)  # reached on the 8th of 2 x 4 steps
    assert lrs[:peak] == sorted(lrs[:peak]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert lrs[0] < 0.01 and lrs[-1] < 1e-3
