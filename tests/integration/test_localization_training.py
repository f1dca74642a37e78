"""LocalizationTask under a real Lightning Trainer, briefly (CPU, a few batches): a smoke fit,
val_loss as the per-sample mean over the validation set, and the checkpoint round trip through
`load_task` for a localizer and a classifier. The pure tests of the task and its network are in
tests/unit/test_localization_task.py."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from support.tasks import canvas_module, quiet_trainer
from support.tasks import localization_task as make_task

from training.data.digits import DigitsDataModule
from training.data.localization import LocalizationDigitsDataModule
from training.tasks import ClassificationTask, LocalizationTask, load_task

pytestmark = pytest.mark.trains  # a few batches

warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture(scope="module")
def canvases() -> LocalizationDigitsDataModule:
    return canvas_module()


def first_batch(dm, loader: str = "val_dataloader"):
    return dm.on_after_batch_transfer(next(iter(getattr(dm, loader)())), 0)


def test_fast_dev_run(canvases):
    pl.seed_everything(0, verbose=False)
    task = make_task(canvases)
    before = [p.detach().clone() for p in task.parameters()]
    trainer = quiet_trainer(fast_dev_run=True)
    trainer.fit(task, datamodule=canvases)
    assert trainer.state.finished
    assert any(not torch.equal(b, p) for b, p in zip(before, task.parameters(), strict=True))
    for key in ("train_loss", "val_loss", "val_obj_acc", "val_cls_acc", "val_iou", "val_iou50"):
        value = trainer.callback_metrics[key]
        assert torch.isfinite(value), key
        if not key.endswith("loss"):
            assert 0 <= value <= 1, key


def test_val_loss_is_the_mean_loss_over_the_validation_set():
    """val_loss must be the per-sample mean over the whole set (not a mean of batch means):
    40 images in batches of 16, 16 and 8."""
    canvases = LocalizationDigitsDataModule(train_size=32, eval_size=40, batch_size=16)
    canvases.setup("fit")
    pl.seed_everything(0, verbose=False)
    task = make_task(canvases)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1)
    trainer.fit(task, datamodule=canvases)
    task.eval()
    per_sample = []
    with torch.no_grad():
        for batch in canvases.val_dataloader():
            x, target = canvases.on_after_batch_transfer(batch, 0)
            pred = task(x)
            # the source's loss by hand: (p̂_c - p_c)^2 alone when empty, else every term
            full = ((pred - target) ** 2).sum(1)
            objectness = (pred[:, 0] - target[:, 0]) ** 2
            per_sample.append(torch.where(target[:, 0] > 0.5, full, objectness))
    expected = torch.cat(per_sample).mean()
    assert trainer.callback_metrics["val_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.fixture(scope="module")
def checkpoints(canvases, tmp_path_factory):
    """A localizer (with the ce loss) and a classifier, briefly trained and saved."""
    folder = tmp_path_factory.mktemp("ckpt")
    pl.seed_everything(0, verbose=False)
    loc = make_task(canvases, loss_variant="ce", box_loss="giou", lr=0.01)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(loc, datamodule=canvases)
    trainer.save_checkpoint(folder / "loc.ckpt")

    digits = DigitsDataModule(batch_size=32)
    digits.setup("fit")
    cls = ClassificationTask(model_name="cnn", num_classes=10, in_channels=1, image_size=28,
                             labels=digits.labels)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(cls, datamodule=digits)
    trainer.save_checkpoint(folder / "cls.ckpt")
    return {"loc": (loc, folder / "loc.ckpt"), "cls": (cls, folder / "cls.ckpt"), "digits": digits}


def test_load_task_detects_a_localizer_and_restores_it(canvases, checkpoints):
    task, path = checkpoints["loc"]
    loaded = load_task(str(path))
    assert type(loaded) is LocalizationTask
    assert loaded.hparams.loss_variant == "ce" and loaded.hparams.box_loss == "giou"
    assert loaded.hparams.labels == canvases.labels
    x, _ = first_batch(canvases, "test_dataloader")
    task.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), task(x), rtol=0, atol=0)
        fresh = LocalizationTask(**dict(loaded.hparams)).eval()
        assert not torch.allclose(fresh(x), task(x))  # the weights came from the file


def test_load_task_detects_a_classifier(checkpoints):
    task, path = checkpoints["cls"]
    loaded = load_task(str(path))
    assert type(loaded) is ClassificationTask
    x, _ = first_batch(checkpoints["digits"], "test_dataloader")
    task.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), task(x), rtol=0, atol=0)
