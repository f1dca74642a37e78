"""The training recipe through `train()`: every option at once in one run (compiled, mixed,
smoothed, erased, warmed up, averaged, clipped, accumulated), a schedule that keeps driving a
backbone unfrozen mid-run, and accumulation that equals the larger batch. The pieces are
unit-tested in tests/unit/test_recipe.py."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from training.spec import TrainSpec
from training.tasks import load_task

pytestmark = pytest.mark.trains


class Probe(Callback):
    """What the Trainer did: optimizer steps, learning rates per step (every param group)."""

    def __init__(self):
        self.lrs: list[list[float]] = []
        self.batches = 0
        self.clip = None

    def on_fit_start(self, trainer, pl_module):
        self.clip = trainer.gradient_clip_val

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def test_every_recipe_option_at_once_trains_and_tests_the_averaged_weights(in_tmp):
    from training.running.local import train

    probe = Probe()
    spec = TrainSpec(model="cnn", data="digits", epochs=3, batch_size=64, augment="trivialaugment",
                     random_erasing=0.25, mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1,
                     lr_schedule="onecycle", warmup_epochs=1, ema_decay=0.9, grad_clip=1.0,
                     accumulate_grad_batches=2, compile=True, progress_bar=False)
    result = train(spec, callbacks=[probe])
    assert probe.clip == 1.0
    batches_per_epoch = probe.batches // 3
    steps = 3 * math.ceil(batches_per_epoch / 2)  # one optimizer step per 2 batches
    lrs = [lr[0] for lr in probe.lrs]
    assert len(set(lrs)) == pytest.approx(steps, abs=1)  # the lr moves once per optimizer step
    peak = lrs.index(max(lrs))  # onecycle's rise is the warmup epoch (in steps of 2 batches)
    assert abs(peak - batches_per_epoch) <= 3 and lrs[-1] < 0.1 * max(lrs)

    checkpoint = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)
    average, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert not any(key.startswith("_compiled") or "_orig_mod" in key for key in average)
    assert any(not torch.equal(average[k], current[k]) for k in average)
    # The test metrics are those of the averaged weights (what export reads), not the raw ones.
    task = load_task(result.best_checkpoint).eval()
    from training.running.steps import prepare

    dm, _ = prepare(spec)
    dm.setup("test")
    correct = total = 0
    with torch.no_grad():
        for images, labels in dm.test_dataloader():
            correct += int((task(dm.batch_transform()(images)).argmax(1) == labels).sum())
            total += len(labels)
    assert result.metrics["test_acc"] == pytest.approx(correct / total, abs=1e-6)

    # And export writes the averaged weights: the ONNX model answers as they do.
    from training.export.parity import ort_session
    from training.export.pipeline import export_run
    from training.spec import ExportSpec

    exported = export_run(ExportSpec(checkpoint=result.best_checkpoint, output="models"))
    x = dm.batch_transform()(images)  # the last test batch
    got = ort_session(exported.model_path).run(None, {"input": x.numpy()})[0]
    raw = load_task(result.best_checkpoint).eval()
    raw.load_state_dict(current)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), task(x), atol=1e-4, rtol=1e-4)  # logits
        assert not torch.allclose(torch.from_numpy(got), raw(x), atol=1e-3)


def test_the_schedule_drives_a_backbone_unfrozen_mid_run(in_tmp):
    from training.running.local import train

    probe = Probe()
    spec = TrainSpec(model="cnn", data="digits", epochs=3, batch_size=128, freeze="backbone",
                     unfreeze_at_epoch=1, lr_schedule="onecycle", augment="none",
                     progress_bar=False)
    train(spec, callbacks=[probe])
    groups = [len(lrs) for lrs in probe.lrs]
    per_epoch = probe.batches // 3
    assert groups[:per_epoch] == [1] * per_epoch and groups[per_epoch:] == [2] * (2 * per_epoch)
    backbone = [lrs[1] for lrs in probe.lrs[per_epoch:]]
    head = [lrs[0] for lrs in probe.lrs[per_epoch:]]
    assert len(set(backbone)) > per_epoch  # scheduled step by step, not left where it started
    assert backbone[-1] < 0.01 * max(backbone)  # and annealed with the head
    assert all(b <= h / 5 for b, h in zip(backbone, head))  # at a fraction of the head's rate


# --- gradient accumulation ---------------------------------------------------------------------
def test_accumulating_4_batches_of_8_takes_the_step_of_one_batch_of_32(tmp_path):
    """SGD without momentum: the update is lr x the gradient, so it shows whether the 4 partial
    gradients were averaged as one batch of 32 would be (the sampler draws the same order)."""
    import pytorch_lightning as pl

    from training.data import create_datamodule
    from training.running.steps import build_task, build_trainer

    def one_step(batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
        spec = TrainSpec(data="digits", model="cnn", augment="none", optimizer="sgd", momentum=0,
                         lr=0.5, lr_schedule="none", batch_size=batch_size, epochs=1,
                         accumulate_grad_batches=accumulate, accelerator="cpu", progress_bar=False)
        pl.seed_everything(0, workers=True, verbose=False)
        dm = create_datamodule(spec.data_spec())
        dm.setup("fit")
        task = build_task(spec, dm)
        trainer = build_trainer(spec, callbacks=[], logger=False, root=tmp_path, max_steps=1,
                                limit_val_batches=0, num_sanity_val_steps=0,
                                enable_checkpointing=False)
        trainer.fit(task, datamodule=dm)
        return {k: v.clone() for k, v in task.net.state_dict().items()}

    accumulated, whole, single = one_step(8, 4), one_step(32, 1), one_step(8, 1)
    for key in whole:
        torch.testing.assert_close(accumulated[key], whole[key], atol=1e-5, rtol=1e-4)
    assert any(not torch.allclose(single[k], whole[k], atol=1e-4) for k in whole)
