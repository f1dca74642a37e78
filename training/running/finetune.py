"""`--freeze backbone` and `--unfreeze-at-epoch N`: train the head alone, then everything.

Lightning's `BackboneFinetuning` needs a `backbone` attribute on the LightningModule; Waldo's
networks instead name their head (`head_names()`: the class-mapping layer of a classifier, the
localization head of a Localizer) and everything else is the backbone (`backbone_modules`).
So this is a small `BaseFinetuning`, which also carries the optimizer's param groups through a
checkpoint resume.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning, Callback
from torch import nn
from torch.optim import Optimizer

from training.models._layers import backbone_modules
from training.spec import TrainSpec
from training.tasks.optim import add_to_schedules


class FreezeBackbone(BaseFinetuning):
    """Freeze the backbone (no gradients, BatchNorm in eval mode so its statistics stay as
    loaded); from epoch `unfreeze_at_epoch` on, train it too at a tenth of the head's current
    learning rate (a new param group, `initial_denom_lr=10`, which the schedule then drives)."""

    def __init__(self, unfreeze_at_epoch: int | None = None):
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch

    @staticmethod
    def backbone(pl_module: pl.LightningModule) -> list[nn.Module]:
        return backbone_modules(pl_module.net)

    def frozen(self, pl_module: pl.LightningModule) -> bool:
        return not any(p.requires_grad for m in self.backbone(pl_module)
                       for p in m.parameters(recurse=False))

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(self.backbone(pl_module), train_bn=False)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int,
                          optimizer: Optimizer) -> None:
        if (self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch
                or not self.frozen(pl_module)):
            return
        modules = self.backbone(pl_module)
        grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if any(id(p) in grouped for m in modules for p in m.parameters(recurse=False)):
            self.make_trainable(modules)  # resumed past N: the restored groups hold them
        else:
            self.unfreeze_and_add_param_group(modules, optimizer, initial_denom_lr=10,
                                              train_bn=True)
            trainer = pl_module.trainer
            add_to_schedules(optimizer.param_groups[-1],
                             [config.scheduler for config in trainer.lr_scheduler_configs])
        for module in modules:
            module.train()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self.frozen(pl_module):  # Lightning put the whole module in training mode
            for module in self.backbone(pl_module):
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()


def finetune_callbacks(spec: TrainSpec) -> list[Callback]:
    """The callbacks for the spec's `freeze` and `unfreeze_at_epoch`: none for `freeze=none`."""
    if spec.freeze == "backbone":
        return [FreezeBackbone(spec.unfreeze_at_epoch)]
    return []


__all__ = ["FreezeBackbone", "finetune_callbacks"]
