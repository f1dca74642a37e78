"""Starting from pretrained weights (`--weights`), adapting them to the data, and freezing the
backbone (which layers `--freeze backbone` freezes; the training runs are in
tests/integration/test_init_from.py). No network: the tests write the torch
hub cache and the state dict files themselves, from torchvision's randomly initialized models.

Named weights are read with `check_hash=True`, as torchvision does: torch hub checks the hash
prefix of the file name only when it downloads, so the test's cached file (whose sha256 is not
the name's) is read as a cached file is; its sha256 is what the provenance records.
"""

from __future__ import annotations

import hashlib
import os
from functools import cache

import pytest
import torch
import torchvision
from support import user_error_line, waldo_main

from training.models import create_localizer, create_model
from training.models._layers import backbone_modules
from training.models.pretrained import adapt_input_conv, load_matching
from training.running.steps import prepare
from training.spec import TrainSpec

CLASSICS = ["alexnet", "vgg11", "vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "googlenet"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@cache
def torchvision_state(arch: str) -> dict[str, torch.Tensor]:
    """A torchvision network's state dict, as its weights files hold them (GoogLeNet's with
    the auxiliary classifiers, as torchvision saves it)."""
    kwargs = {"aux_logits": True, "init_weights": True} if arch == "googlenet" else {}
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(**kwargs).state_dict()


def hub_file(tmp_path, monkeypatch, arch: str = "resnet18"):
    """Write torchvision's `arch` into a torch hub cache under TORCH_HOME = tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.get_model_weights(arch)["DEFAULT"].url
    path = tmp_path / "hub" / "checkpoints" / os.path.basename(url)
    path.parent.mkdir(parents=True)
    torch.save(torchvision_state(arch), path)
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    status, _, err = waldo_main(capsys, *argv)
    return user_error_line(status, err)


def test_weights_default_comes_from_the_hub_cache(tmp_path, monkeypatch):
    path = hub_file(tmp_path, monkeypatch)
    spec = TrainSpec(model="resnet18", data="digits", image_size=32, weights="DEFAULT",
                     progress_bar=False)
    dm, task = prepare(spec)
    state, net = torch.load(path, weights_only=True), task.net
    for key, value in net.state_dict().items():
        if key == "conv1.weight":  # digits are gray: the RGB kernel summed
            assert torch.equal(value, state[key].sum(dim=1, keepdim=True))
        elif not key.startswith("fc."):
            assert torch.equal(value, state[key]), key
    assert net.fc.out_features == 10 == dm.num_classes
    # The weights' normalization (ImageNet's, averaged for one channel) replaces the data's,
    # in the batch transform and in the hyperparameters that export copies into the card.
    mean, std = [round(sum(IMAGENET_MEAN) / 3, 6)], [round(sum(IMAGENET_STD) / 3, 6)]
    assert list(dm.mean) == mean and list(dm.std) == std
    assert task.hparams.mean == mean and task.hparams.std == std
    normalize = dm.batch_transform()
    assert list(normalize.mean) == mean and list(normalize.std) == std
    provenance = task.hparams.provenance
    assert provenance["weights.name"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert provenance["weights.url"].endswith(path.name)
    assert provenance["weights.sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_provenance_reaches_the_model_card(tmp_path, monkeypatch):
    from training.export.card import build_card
    from training.export.source import CheckpointRecord

    hub_file(tmp_path, monkeypatch)
    spec = TrainSpec(model="resnet18", data="digits", image_size=32, weights="DEFAULT")
    _, task = prepare(spec)
    card = build_card(CheckpointRecord(task="classify", hparams=dict(task.hparams)))
    assert card.weights == task.hparams.provenance and card.input.mean == task.hparams.mean


def test_weights_from_a_state_dict_file(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_state("resnet18"), path)
    _, task = prepare(TrainSpec(model="resnet18", data="digits", image_size=32, weights=str(path)))
    expected = torchvision_state("resnet18")["layer4.1.conv2.weight"]
    assert torch.equal(task.net.layer4[1].conv2.weight, expected)
    assert task.hparams.provenance["weights.path"] == str(path)


def test_one_channel_kernel_is_the_sum_of_the_rgb_kernels():
    rgb = torch.randn(8, 3, 5, 5)
    assert torch.equal(adapt_input_conv(rgb, 1), rgb[:, 0:1] + rgb[:, 1:2] + rgb[:, 2:3])
    assert torch.equal(adapt_input_conv(rgb, 3), rgb * 1.0)
    six = adapt_input_conv(rgb, 6)  # timm: repeated and scaled, activations keep their size
    assert torch.allclose(six.sum(dim=1), rgb.sum(dim=1))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", CLASSICS)
def test_every_classic_loads_torchvision_weights(arch, channels):
    state = torchvision_state(arch)
    args = {"transform_input": True} if arch == "googlenet" else {}
    net = create_model(arch, num_classes=10, in_channels=channels, image_size=64, **args)
    load_matching(net, state, keep_head=True, source="test")
    loaded = net.state_dict()
    head = tuple(f"{name}." for name in net.head_names())
    first = next(k for k, v in loaded.items() if v.ndim == 4)
    expected = state[first] if channels == 3 else state[first].sum(dim=1, keepdim=True)
    assert torch.equal(loaded[first], expected)
    for key, value in loaded.items():
        if key != first and not key.startswith(head):
            assert torch.equal(value, state[key]), key
    assert not any(k.startswith("aux") for k in loaded)  # GoogLeNet drops them, as torchvision
    net.eval()
    assert net(torch.rand(2, channels, 64, 64)).shape == (2, 10)


def test_a_localizer_backbone_loads_classic_weights():
    net = create_localizer("resnet18", num_classes=3, in_channels=1, image_size=64)
    load_matching(net, torchvision_state("resnet18"), keep_head=True, source="test")
    assert torch.equal(net.backbone.layer2[0].conv1.weight,
                       torchvision_state("resnet18")["layer2.0.conv1.weight"])


def test_weights_of_another_architecture_are_one_line(tmp_path, capsys):
    path = tmp_path / "vgg11.pth"
    torch.save(torchvision_state("vgg11"), path)
    line = one_line_error(capsys, ["train", "--model", "resnet18", "--weights", str(path),
                                   "--image-size", "32", "--no-progress-bar"])
    assert "another architecture" in line and "vgg11.pth" in line


def test_unknown_weights_name_lists_the_valid_ones(capsys):
    line = one_line_error(capsys, ["train", "--model", "resnet50", "--weights", "IMAGENET9K",
                                   "--image-size", "32", "--no-progress-bar"])
    assert "'IMAGENET9K'" in line and "IMAGENET1K_V1" in line and "IMAGENET1K_V2" in line


def test_weights_name_for_a_network_without_torchvision_weights(capsys):
    line = one_line_error(capsys, ["train", "--model", "mlp", "--weights", "DEFAULT",
                                   "--no-progress-bar"])
    assert "'mlp'" in line and "path" in line


def test_unfreeze_beyond_the_last_epoch_is_refused(capsys):
    line = one_line_error(capsys, ["train", "--freeze", "backbone", "--unfreeze-at-epoch", "3",
                                   "--epochs", "3", "--no-progress-bar"])
    assert "unfreeze_at_epoch" in line


def test_offline_without_the_file_names_where_to_put_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        from urllib.error import URLError
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    line = one_line_error(capsys, ["train", "--model", "resnet34", "--weights", "DEFAULT",
                                   "--image-size", "32", "--no-progress-bar"])
    url = torchvision.models.ResNet34_Weights.DEFAULT.url
    assert str(tmp_path / "hub" / "checkpoints" / os.path.basename(url)) in line and url in line


def test_backbone_and_head_of_every_network():
    for name, head in [("cnn", "head.1"), ("mlp", "head"), ("lenet5", "head.5"),
                       ("resnet18", "fc"), ("vgg11", "classifier.6"), ("alexnet", "classifier.6")]:
        net = create_model(name, num_classes=4, in_channels=1, image_size=64)
        assert net.head_names() == [head]
        in_backbone = {id(p) for m in backbone_modules(net) for p in m.parameters(recurse=False)}
        head_params = {id(p) for p in net.get_submodule(head).parameters()}
        assert in_backbone | head_params == {id(p) for p in net.parameters()}
        assert not in_backbone & head_params
    net = create_model("googlenet", num_classes=4, in_channels=3, aux_logits=True)
    assert net.head_names() == ["fc", "aux1.fc2", "aux2.fc2"]
    loc = create_localizer("cnn", num_classes=2, in_channels=1, image_size=28)
    assert loc.head_names() == ["head"]
