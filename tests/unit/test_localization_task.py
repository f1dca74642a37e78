"""LocalizationTask and its network (`training.models.heads`): output layout on several
backbones, the size of the headless localizers, and the hyperparameters its ModelCard is built
from. Nothing here trains: the smoke fit, val_loss over the validation set and the checkpoint
round trip through `load_task` are in tests/integration/test_localization_training.py."""

from __future__ import annotations

import warnings

import pytest
import torch
from support.tasks import canvas_module, n_params
from support.tasks import localization_task as make_task
from torch import nn

from training.data.localization import LocalizationDigitsDataModule
from training.errors import WaldoError
from training.models import Localizer, create_localizer, create_model
from training.tasks import LocalizationTask

warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture(scope="module")
def canvases() -> LocalizationDigitsDataModule:
    return canvas_module()


@pytest.mark.parametrize("model,channels,size", [("cnn", 1, 64), ("lenet5", 1, 48),
                                                 ("resnet18", 3, 64)])
def test_output_is_an_activated_5_plus_k_vector(model, channels, size):
    torch.manual_seed(0)
    task = LocalizationTask(model_name=model, num_classes=4, in_channels=channels,
                            image_size=size).eval()
    with torch.no_grad():
        y = task(torch.randn(3, channels, size, size) * 3)
    assert y.shape == (3, 9)
    assert ((y[:, :5] >= 0) & (y[:, :5] <= 1)).all()  # p_c and the box: sigmoid
    assert ((y[:, 5:] >= 0) & (y[:, 5:] <= 1)).all()
    torch.testing.assert_close(y[:, 5:].sum(1), torch.ones(3))  # class probabilities
    assert not torch.allclose(y[0], y[1])  # depends on the input


# Localizers for 10 classes (the localization-digits canvas is 1x64x64): backbone without its
# classifier + pooled grid + 256-wide MLP. Built with the classifier they were 134,791,888
# (vgg16) and 57,062,096 (alexnet) at 1x64x64, and 140,691,280 and 59,371,344 at 3x224x224.
LOCALIZER_COUNTS = {
    ("vgg16", 1, 64): 15_241_935,
    ("alexnet", 1, 64): 2_523_855,
    ("vgg16", 3, 224): 21_141_327,
    ("alexnet", 3, 224): 4_833_103,
}


@pytest.mark.parametrize("name,channels,size", sorted(LOCALIZER_COUNTS))
def test_localizer_carries_no_unused_classifier(name, channels, size):
    """Smaller than the backbone's full network plus the head, by its classifier; no
    4096-wide layer left. Built on the meta device: counts only, no memory."""
    with torch.device("meta"):
        net = create_localizer(name, num_classes=10, in_channels=channels, image_size=size)
        full = create_model(name, num_classes=1, in_channels=channels, image_size=size)
    assert isinstance(net, Localizer) and net.backbone.num_classes == 0
    assert not [m for m in net.modules() if isinstance(m, nn.Linear) and m.out_features == 4096]
    assert n_params(net) < n_params(full) + n_params(net.head)
    assert n_params(net) == n_params(net.backbone) + n_params(net.head)
    assert n_params(net) == LOCALIZER_COUNTS[name, channels, size]


@pytest.mark.parametrize("name", ["vgg16", "alexnet"])
def test_localizer_output_on_the_classics(name):
    torch.manual_seed(0)
    net = create_localizer(name, num_classes=10, in_channels=1, image_size=64).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 1, 64, 64) * 3)
    assert y.shape == (2, 15)
    assert ((y >= 0) & (y <= 1)).all()
    torch.testing.assert_close(y[:, 5:].sum(1), torch.ones(2))
    assert not torch.allclose(y[0], y[1])


def test_localizer_refuses_bad_arguments():
    with pytest.raises(WaldoError, match=r"num_classes=0"):
        create_localizer("cnn", num_classes=0, in_channels=1, image_size=64)
    # (googlenet's aux_logits is dropped for a localizer: tests/unit/test_models.py)


def test_localizer_loads_a_state_dict_that_still_holds_the_unused_classifier():
    """Localizers saved before heads moved to models/ carried the backbone's 1-way
    classifier; those weights were never used and are skipped on load."""
    torch.manual_seed(0)
    net = create_localizer("cnn", num_classes=4, in_channels=1, image_size=64)
    old = dict(net.state_dict())
    stale = create_model("cnn", num_classes=1, in_channels=1, image_size=64).head
    old.update({f"backbone.head.{k}": v for k, v in stale.state_dict().items()})
    fresh = create_localizer("cnn", num_classes=4, in_channels=1, image_size=64)
    fresh.load_state_dict(old)  # strict
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(fresh.eval()(x), net.eval()(x), rtol=0, atol=0)
    old["backbone.features.9.weight"] = torch.zeros(1)  # anything else is still refused
    with pytest.raises(RuntimeError, match="Unexpected"):
        fresh.load_state_dict(old)


def test_hparams_hold_what_the_card_is_built_from(canvases):
    """The ModelCard is written by `training.export.card` from these saved hyperparameters
    (its localize outputs are tested in tests/unit/test_export.py)."""
    task = make_task(canvases)
    h = task.hparams
    assert task.task == "localize"
    assert h.labels == [str(d) for d in range(10)] and h.model_name == "cnn"
    assert (h.in_channels, h.image_size, h.num_classes) == (1, 64, 10)
    assert h.mean == list(canvases.mean) and h.std == list(canvases.std)
    assert 0 < h.mean[0] < 1 and 0 < h.std[0] < 1
