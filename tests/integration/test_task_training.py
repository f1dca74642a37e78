"""ClassificationTask in a Lightning Trainer: one-batch smoke runs per network, a schedule over
real epochs, and the checkpoint a Trainer writes (round trip, data state, test accuracy)."""

from __future__ import annotations

import time
import warnings

import pytest
import pytorch_lightning as pl
import torch
from support.tasks import classification_task as make_task
from support.tasks import digits_module, quiet_trainer

from training.data.digits import DigitsDataModule
from training.tasks import ClassificationTask

warnings.filterwarnings("ignore", ".*does not have many workers.*")

pytestmark = pytest.mark.trains


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    return digits_module()


@pytest.mark.parametrize("model", ["mlp", "cnn", "lenet5"])
def test_fast_dev_run(digits, model):
    pl.seed_everything(0, verbose=False)
    task = make_task(digits, model)
    before = [p.detach().clone() for p in task.parameters()]
    trainer = quiet_trainer(fast_dev_run=True)
    trainer.fit(task, datamodule=digits)
    assert trainer.state.finished
    changed = [not torch.equal(b, p) for b, p in zip(before, task.parameters(), strict=True)]
    assert any(changed), "no optimizer step was taken"
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert torch.isfinite(trainer.callback_metrics[key]), key


def test_googlenet_aux_losses_train(tmp_path):
    """With aux classifiers the training step gets three outputs and adds their losses."""
    pl.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=8, image_size=32)
    dm.setup("fit")
    task = make_task(dm, "googlenet", model_args={"aux_logits": True})
    trainer = quiet_trainer(fast_dev_run=True)
    trainer.fit(task, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    # In train mode the loss includes the aux heads: it differs from the main head's alone.
    x, y = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    task.train()
    with torch.no_grad():
        torch.manual_seed(0)
        out = task(x)
        loss, logits = task._loss(out, y)
        main = torch.nn.functional.cross_entropy(out[0], y)
        aux = sum(torch.nn.functional.cross_entropy(a, y) for a in out[1:])
    assert isinstance(out, tuple) and len(out) == 3
    torch.testing.assert_close(loss, main + 0.3 * aux)
    assert logits is out[0]


def test_one_epoch_trains_in_a_trainer_with_a_schedule(digits):
    task = make_task(digits, "mlp", optimizer="sgd", lr_schedule="step", lr_step_size=1,
                     lr_gamma=0.5, lr=0.1, epochs=2)
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(task, datamodule=digits)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.025)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """A cnn trained for a few batches and saved by the Trainer."""
    pl.seed_everything(0, verbose=False)
    task = make_task(digits, "cnn", lr=0.01)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=10, limit_val_batches=2)
    trainer.fit(task, datamodule=digits)
    path = tmp_path_factory.mktemp("ckpt") / "cnn.ckpt"
    trainer.save_checkpoint(path)
    return task, trainer, path


def test_checkpoint_round_trip_needs_no_arguments(digits, trained):
    task, _, path = trained
    loaded = ClassificationTask.load_from_checkpoint(path, map_location="cpu")
    assert loaded.hparams.model_name == "cnn"
    assert loaded.hparams.labels == digits.labels
    x, _ = digits.on_after_batch_transfer(next(iter(digits.test_dataloader())), 0)
    task.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), task(x), rtol=0, atol=0)
    fresh = ClassificationTask(**{k: v for k, v in loaded.hparams.items()})
    with torch.no_grad():
        assert not torch.equal(fresh.eval()(x), task(x))  # the weights came from the file


def test_checkpoint_holds_the_datamodule_state(digits, trained):
    _, _, path = trained
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint[type(digits).__qualname__]
    assert state["labels"] == digits.labels
    assert tuple(state["mean"]) == digits.mean and tuple(state["std"]) == digits.std
    restored = DigitsDataModule()
    restored.load_state_dict(state)
    assert restored.labels == digits.labels
    assert (restored.mean, restored.std) == (digits.mean, digits.std)


def test_test_accuracy_is_the_fraction_correct(digits, trained):
    """`test_acc` must be plain accuracy: correct predictions over all predictions, i.e. the
    trace of the test confusion matrix over its sum (not an average of per-class recalls)."""
    task, trainer, _ = trained
    (metrics,) = trainer.test(task, datamodule=digits, verbose=False)
    confusion = task.test_confusion
    assert confusion is not None and confusion.shape == (10, 10)
    assert int(confusion.sum()) == len(digits.test_set)
    fraction_correct = (confusion.diag().sum() / confusion.sum()).item()
    assert metrics["test_acc"] == pytest.approx(fraction_correct, abs=1e-6)


class _Recorder(pl.loggers.Logger):
    """Keeps what callbacks log through `trainer.logger.log_metrics`."""

    def __init__(self):
        super().__init__()
        self.metrics: list[dict] = []

    name, version = "recorder", "0"

    def log_metrics(self, metrics, step=None):
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class _SlowRows(torch.utils.data.Dataset):
    """Rows of `base` that each take `delay` seconds to produce, as a slow disk or decoder would."""

    def __init__(self, base, delay: float):
        self.base, self.delay = base, delay

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.base[i]


@pytest.mark.parametrize("delay, low, high", [(0.0, 0.0, 0.5), (0.03, 0.6, 1.0)])
def test_data_wait_fraction_shows_a_loader_that_starves_the_step(digits, delay, low, high, monkeypatch):
    from training.running.callbacks import EpochFacts

    task = make_task(digits, "mlp")
    recorder = _Recorder()
    loader = torch.utils.data.DataLoader(_SlowRows(digits.train_dataloader().dataset, delay), batch_size=8)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=recorder, callbacks=[EpochFacts()],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         max_epochs=1, limit_train_batches=6, limit_val_batches=0)
    monkeypatch.setattr(digits, "train_dataloader", lambda: loader)  # the module's batch transform stays
    trainer.fit(task, datamodule=digits)
    (facts,) = [m for m in recorder.metrics if "data_wait_fraction" in m]
    # 8 rows x 30 ms against a step of ~1 ms (tens of ms on a loaded machine)
    assert low <= facts["data_wait_fraction"] <= high, facts
    assert facts["train_samples_rank0"] == 48
