"""The model registry and every registered network.

Parametrized over `list_models()`, so a newly registered network is tested the moment it
exists. Parameter counts are checked against torchvision's published figures and against
torchvision's own builders (built on the meta device: same parameters, no memory, no init).
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch
import torchvision
from support.tasks import n_params
from torch import nn

from training.errors import WaldoError
from training.models import _api, create_model, get_model_info, list_models, register_model

MODELS = list_models()
NUM_CLASSES = 5

# torchvision's published parameter counts (3 channels, 1,000 classes).
PUBLISHED = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "googlenet": 6_624_904,  # without the auxiliary classifiers
}

# The source material's networks: 10 classes on 1x28x28.
SOURCE_COUNTS = {"mlp": 178_110, "cnn": 5_386, "lenet5": 61_706}


def test_registry_holds_every_classic_and_source_network():
    assert set(PUBLISHED) | set(SOURCE_COUNTS) <= set(MODELS)
    assert MODELS == sorted(MODELS)


def input_size(name: str) -> int:
    """The model's designed size for sized networks, the smallest it accepts otherwise."""
    info = get_model_info(name)
    return info.default_input[1] if info.sized else info.min_size


@pytest.fixture(scope="module", params=MODELS)
def built(request):
    """One 1-channel, 5-class instance per model, shared by the tests below (module scope
    makes pytest run all tests of one model before building the next)."""
    name = request.param
    torch.manual_seed(0)
    size = input_size(name)
    net = create_model(name, num_classes=NUM_CLASSES, in_channels=1, image_size=size)
    return name, net, size


def test_forward_and_backward(built):
    name, net, size = built
    net.train()
    x = torch.randn(2, 1, size, size)  # (B, C, H, W)
    out = net(x)
    assert isinstance(out, torch.Tensor), f"{name} returned {type(out).__name__} in train mode"
    assert out.shape == (2, NUM_CLASSES)
    net.zero_grad()
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: parameters outside the graph: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_forward_features_then_head_equals_forward(built):
    """`forward_head(forward_features(x)) == forward(x)` in eval mode; for the classics,
    that is also what torchvision's own `forward` computes (they only re-split it)."""
    name, net, size = built
    net.eval()
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        features = net.forward_features(x)
        assert features.shape[0] == 2 and features.shape[1] == net.num_features
        out = net(x)
        torch.testing.assert_close(net.forward_head(features), out, rtol=0, atol=0)
        tv_base = next((c for c in type(net).__mro__[1:]
                        if c.__module__.startswith("torchvision.models")), None)
        if tv_base is not None:
            torch.testing.assert_close(out, tv_base.forward(net, x))


def last_linear(net: nn.Module) -> nn.Linear:
    """The classifier's final layer: every family registers it last."""
    return [m for m in net.modules() if isinstance(m, nn.Linear)][-1]


def test_forward_head_pre_logits_is_what_the_last_layer_gets(built):
    name, net, size = built
    net.eval()
    with torch.no_grad():
        features = net.forward_features(torch.randn(2, 1, size, size))
        pre = net.forward_head(features, pre_logits=True)
        last = last_linear(net)
        assert pre.shape == (2, last.in_features), name
        torch.testing.assert_close(last(pre), net.forward_head(features))


def test_reset_classifier_keeps_hidden_layers_and_retargets(built):
    """Runs last on the shared instance and leaves it as it found it (NUM_CLASSES outputs)."""
    name, net, size = built
    net.eval()
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        features = net.forward_features(x)
        before = net.forward_head(features, pre_logits=True)
        old_last = last_linear(net)
        net.reset_classifier(3)
        assert net(x).shape == (2, 3) and net.num_classes == 3
        assert last_linear(net) is not old_last
        torch.testing.assert_close(net.forward_head(features, pre_logits=True), before)
        net.reset_classifier(NUM_CLASSES)
        assert net(x).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_zero_builds_no_classifier(name):
    """Headless: forward returns the pooled (B, num_features) features, and exactly one
    module (the classifier) is missing compared to the full network."""
    size = input_size(name)
    torch.manual_seed(0)
    net = create_model(name, num_classes=0, in_channels=1, image_size=size)
    with torch.device("meta"):  # the full network only for its parameter names: no memory
        full = create_model(name, num_classes=NUM_CLASSES, in_channels=1, image_size=size)
    assert net.num_classes == 0
    assert not [m for m in net.modules() if isinstance(m, nn.Linear) and m.out_features == 4096]
    names, full_names = {n for n, _ in net.named_parameters()}, {n for n, _ in full.named_parameters()}
    assert names < full_names
    assert len({n.split(".")[0] for n in full_names - names}) == 1, sorted(full_names - names)
    x = torch.randn(2, 1, size, size)
    for train in (True, False):
        net.train(train)
        with torch.no_grad():
            out = net(x)
            assert isinstance(out, torch.Tensor), f"{name} returned {type(out).__name__}"
            assert out.shape == (2, net.num_features)
            assert torch.isfinite(out).all()
    with torch.no_grad():
        features = net.forward_features(x)
        torch.testing.assert_close(net.forward_head(features, pre_logits=True), out)
        torch.testing.assert_close(net.forward_head(features), out)
    net.reset_classifier(0)  # already headless: stays so
    assert net.num_classes == 0 and {n for n, _ in net.named_parameters()} == names


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier_on_a_headless_network_builds_the_family_classifier(name):
    """On the meta device (shapes and counts, no memory): headless + reset_classifier(k) is
    the same network as one built with k classes, and on the network's dtype."""
    size = input_size(name)
    with torch.device("meta"):
        net = create_model(name, num_classes=0, in_channels=1, image_size=size).double()
        net.reset_classifier(7)
        reference = create_model(name, num_classes=7, in_channels=1, image_size=size)
        x = torch.empty(2, 1, size, size, dtype=torch.float64)
    assert n_params(net) == n_params(reference)
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert {p.dtype for p in net.parameters()} == {torch.float64}
    net.eval()
    assert net(x).shape == (2, 7) and net.num_classes == 7
    net.reset_classifier(0)
    assert net(x).shape == (2, net.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_negative_num_classes_is_an_error(name):
    size = input_size(name)
    with pytest.raises(WaldoError, match=r"num_classes.*\(got -2\)"):
        create_model(name, num_classes=-2, in_channels=1, image_size=size)
    with torch.device("meta"):
        net = create_model(name, num_classes=0, in_channels=1, image_size=size)
    with pytest.raises(WaldoError, match=r"num_classes.*\(got -1\)"):
        net.reset_classifier(-1)


@pytest.mark.parametrize("name", MODELS)
def test_builders_are_named_documented_keyword_only_functions(name):
    builder = get_model_info(name).builder
    assert builder.__name__ == name
    assert builder.__doc__ and builder.__doc__.strip(), f"{name}'s builder has no docstring"
    params = inspect.signature(builder).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), name
    if name in PUBLISHED or name == "lenet5":  # an architecture from a paper cites it
        assert re.search(r"\b(19|20)\d\d\b", builder.__doc__), f"{name}: no paper year"


@pytest.mark.parametrize("name", ["vgg11", "alexnet"])
def test_headless_classics_keep_torchvision_init_off_the_meta_device(name):
    """The classifier is built on the meta device; the kept layers must be real and
    initialized as torchvision does (VGG: zero conv biases; AlexNet: PyTorch's default)."""
    net = create_model(name, num_classes=0, in_channels=1, image_size=64)
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert all(not p.is_meta for p in net.parameters())
    assert all(c.weight.std() > 0 for c in convs)
    if name.startswith("vgg"):
        assert all(torch.count_nonzero(c.bias) == 0 for c in convs)
    else:
        assert all(torch.count_nonzero(c.bias) > 0 for c in convs)


@pytest.mark.parametrize("name", [m for m in MODELS if get_model_info(m).sized])
def test_sized_networks_follow_image_size(name):
    info = get_model_info(name)
    for size in sorted({info.min_size, 32, 40}):
        net = create_model(name, num_classes=3, in_channels=1, image_size=size)
        out = net(torch.randn(2, 1, size, size))
        assert out.shape == (2, 3), f"{name} at {size}x{size}"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_classics_match_torchvision_published_counts(name):
    with torch.device("meta"):
        ours = create_model(name, num_classes=1000, in_channels=3)
        kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        reference = getattr(torchvision.models, name)(weights=None, **kwargs)
    assert n_params(ours) == PUBLISHED[name]
    assert n_params(ours) == n_params(reference)


@pytest.mark.parametrize("name", sorted(SOURCE_COUNTS))
def test_source_networks_parameter_counts(name):
    net = create_model(name, num_classes=10, in_channels=1, image_size=28)
    assert n_params(net) == SOURCE_COUNTS[name]


def test_lenet5_same_count_on_32x32():
    net = create_model("lenet5", num_classes=10, in_channels=1, image_size=32)
    assert n_params(net) == 61_706
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def first_weighted_layer(net: nn.Module) -> nn.Module:
    return next(m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize("name", MODELS)
def test_in_channels_changes_only_the_first_layer(name):
    """1-channel and 3-channel versions differ exactly by the first layer's input weights."""
    size = input_size(name)
    with torch.device("meta"):
        one = create_model(name, num_classes=10, in_channels=1, image_size=size)
        three = create_model(name, num_classes=10, in_channels=3, image_size=size)
    first = first_weighted_layer(one)
    if isinstance(first, nn.Conv2d):
        assert first.in_channels == 1
        assert first_weighted_layer(three).in_channels == 3
    assert n_params(three) - n_params(one) == 2 * first.weight.numel()


@pytest.mark.parametrize("name", [m for m in MODELS if get_model_info(m).sized])
def test_sized_networks_run_on_three_channels(name):
    net = create_model(name, num_classes=4, in_channels=3, image_size=28)
    assert net(torch.randn(2, 3, 28, 28)).shape == (2, 4)


def test_googlenet_aux_logits_in_train_mode():
    net = create_model("googlenet", num_classes=4, in_channels=1, aux_logits=True)
    x = torch.randn(2, 1, 32, 32)
    net.train()
    out = net(x)
    assert isinstance(out, tuple) and len(out) == 3
    assert all(o.shape == (2, 4) for o in out)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 4)


def test_googlenet_aux_logits_off_by_default():
    net = create_model("googlenet", num_classes=4, in_channels=1)
    assert net.aux1 is None and net.aux2 is None
    net.train()
    out = net(torch.randn(2, 1, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)


def test_googlenet_aux_logits_need_a_classifier():
    with pytest.raises(WaldoError, match=r"aux_logits.*num_classes=0"):
        create_model("googlenet", num_classes=0, in_channels=1, aux_logits=True)
    net = create_model("googlenet", num_classes=4, in_channels=1, aux_logits=True)
    with pytest.raises(WaldoError, match=r"aux_logits.*num_classes=0"):
        net.reset_classifier(0)
    assert net.fc.out_features == 4  # the refused reset changed nothing
    net.reset_classifier(6)  # the auxiliary outputs follow the main one
    net.train()
    out = net(torch.randn(2, 1, 32, 32))
    assert isinstance(out, tuple) and all(o.shape == (2, 6) for o in out)


def test_unknown_name_lists_valid_names():
    with pytest.raises(WaldoError) as exc:
        create_model("resnet19", num_classes=10, in_channels=3)
    message = str(exc.value)
    assert "resnet19" in message
    assert all(name in message for name in MODELS)


def test_duplicate_registration_is_an_error(monkeypatch):
    monkeypatch.setattr(_api, "_MODELS", dict(_api._MODELS))  # leave the real registry alone
    original = get_model_info("cnn").builder

    with pytest.raises(ValueError) as exc:
        @register_model("cnn")
        def cnn(*, num_classes: int, in_channels: int) -> nn.Module:  # pragma: no cover
            return nn.Identity()

    assert "cnn" in str(exc.value)
    assert all(name in str(exc.value) for name in MODELS)
    assert get_model_info("cnn").builder is original


def test_unknown_builder_argument_is_an_error():
    with pytest.raises(WaldoError, match="aux_logit"):
        create_model("googlenet", num_classes=10, in_channels=3, aux_logit=True)
    with pytest.raises(WaldoError, match="dropout"):
        create_model("cnn", num_classes=10, in_channels=1, dropout=0.5)


@pytest.mark.parametrize("name", MODELS)
def test_too_small_input_is_an_error(name):
    info = get_model_info(name)
    if info.min_size <= 1:
        pytest.skip(f"{name} accepts any size")
    with pytest.raises(WaldoError, match=str(info.min_size)):
        create_model(name, num_classes=10, in_channels=1, image_size=info.min_size - 1)


@pytest.mark.parametrize("kwargs,named", [(dict(num_classes=-1, in_channels=1), "num_classes"),
                                          (dict(num_classes=10, in_channels=0), "in_channels")])
def test_bad_sizes_are_errors(kwargs, named):
    with pytest.raises(WaldoError, match=rf"{named}.*\(got {kwargs[named]}\)"):
        create_model("cnn", **kwargs)


def test_a_googlenet_localizer_ignores_aux_logits():
    """Specs (and checkpoints) of googlenet localizers may carry aux_logits=true, which a
    classifier uses and a localizer, reading only the features, cannot."""
    from training.models import create_localizer

    net = create_localizer("googlenet", num_classes=3, in_channels=1, image_size=32, aux_logits=True)
    assert net.backbone.aux1 is None and net.backbone.num_classes == 0
    assert net.eval()(torch.zeros(2, 1, 32, 32)).shape == (2, 8)
