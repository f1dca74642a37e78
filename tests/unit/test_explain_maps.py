"""The explain outputs an export writes (training.export.explain) and the maps the service makes
from them (serving.explain), without a server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from httpapi.errors import ApiError
from serving import explain
from serving.modelcard import InputSpec, ModelCard
from serving.v2.protocol import extra_shapes
from training.export.card import card_outputs
from training.export.explain import attach_constants, explain_graph
from training.export.parity import export_checked, ort_session
from training.models import create_model


def card(spec=None, labels=("cat", "dog", "7")) -> ModelCard:
    return ModelCard(name="m", task="classify", labels=list(labels),
                     input=InputSpec(channels=1, height=12, width=12, mean=[0.0], std=[1.0]),
                     outputs=card_outputs("classify"), explain=spec)


def test_targets_are_labels_or_indices_and_anything_else_is_a_422():
    c = card()
    assert explain.parse_target(c, None) is None and explain.parse_target(c, "") is None
    assert explain.parse_target(c, "dog") == 1 and explain.parse_target(c, "#2") == 2
    assert explain.parse_target(c, "7") == 2  # a label that looks like a number is a label
    for bad, named in (("#3", "#0 to #2"), ("cow", "'cat'"), ("#x", "#x")):
        with pytest.raises(ApiError) as caught:
            explain.parse_target(c, bad)
        assert caught.value.status == 422 and named in str(caught.value.message)


def test_occlusion_windows_fit_the_budget_and_cover_every_pixel():
    for height, width, passes in ((28, 28, 50), (64, 32, 26), (5, 5, 1000), (96, 96, 2)):
        windows = explain.occlusion_windows(height, width, passes)
        assert 1 <= len(windows) <= max(passes - 1, 1)
        covered = np.zeros((height, width), bool)
        for top, bottom, left, right in windows:
            assert 0 <= top < bottom <= height and 0 <= left < right <= width
            covered[top:bottom, left:right] = True
        assert covered.all()


def test_occlusion_finds_the_region_the_score_depends_on():
    """A 'model' whose score is the sum of the pixels in rows 2..5, columns 7..10: the map is
    brightest there and zero where occluding changes nothing."""
    x = np.ones((1, 1, 12, 12), np.float32)
    windows = explain.occlusion_windows(12, 12, 37)
    scores = explain.occluded(x, windows)[:, 0, 2:6, 7:11].sum(axis=(1, 2))
    heat = explain.occlusion_map(16.0, scores, windows, 12, 12)
    assert heat.max() == 1.0 and heat[2:6, 7:11].mean() > 3 * heat.mean()
    peak = np.unravel_index(heat.argmax(), heat.shape)
    assert 2 <= peak[0] < 6 and 7 <= peak[1] < 11
    assert heat[11, 0] == 0


def test_class_activation_map_is_the_class_weights_over_the_maps():
    rng = np.random.default_rng(0)
    maps, weight = rng.standard_normal((4, 3, 3)), rng.standard_normal((2, 4))
    expected = np.maximum(np.einsum("c,chw->hw", weight[1], maps), 0)
    got = explain.class_activation_map(maps, weight, 1)
    assert np.allclose(got, expected / expected.max(), atol=1e-6)
    assert explain.class_activation_map(maps, -np.abs(weight), 0).max() >= 0  # never negative


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    net = create_model("resnet18", num_classes=5, in_channels=3, image_size=32).eval()
    return net, explain_graph(net, (3, 32, 32))


def test_the_export_finds_the_stages_and_the_cam_weights_of_a_pooled_head(resnet):
    net, graph = resnet
    spec = graph.spec
    assert [s.module for s in spec.stages] == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert spec.stages[-1].shape == [512, 1, 1] and spec.first_conv.module == "conv1"
    assert (spec.first_conv.stride, spec.first_conv.padding, spec.first_conv.bias) == ([2, 2], [3, 3], None)
    assert np.array_equal(graph.constants["cam_weight"], net.fc.weight.detach().numpy())
    assert spec.filters.shape == [64, 3, 7, 7] and spec.cam_weight.shape == [5, 512]
    # what the file gives is what torch computes, for the prediction and every extra output
    exported = export_checked(graph.net, (3, 32, 32), output_names=["logits", *graph.outputs])
    model = attach_constants(exported.model, graph.constants)
    session = ort_session(model)
    names = [o.name for o in session.get_outputs()]
    assert names == ["logits", *graph.outputs, "filters", "cam_weight"] == ["logits", *spec.shapes()]
    x = torch.randn(2, 3, 32, 32)
    got = dict(zip(names, session.run(None, {"input": x.numpy()}), strict=True))
    with torch.no_grad():
        assert np.allclose(got["logits"], net(x).numpy(), atol=1e-4)
        assert np.allclose(got["stage_2"], net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))),
                           atol=1e-4)
    with pytest.raises(ValueError, match="filters"):
        attach_constants(model, {"filters": np.zeros(1)})
    c = card(spec, labels=[str(k) for k in range(5)])
    assert extra_shapes(c)["stage_5"] == [-1, 512, 1, 1] and extra_shapes(c)["filters"] == [64, 3, 7, 7]


def test_a_dense_head_gets_no_cam_weights_and_occlusion_instead():
    net = create_model("cnn", num_classes=10, in_channels=1, image_size=28).eval()
    graph = explain_graph(net, (1, 28, 28))
    assert graph.spec.cam_weight is None and "cam_weight" not in graph.constants
    assert [s.shape for s in graph.spec.stages] == [[8, 24, 24], [16, 10, 10]]
    c = card(graph.spec, labels=[str(k) for k in range(10)]).model_copy(
        update={"input": InputSpec(channels=1, height=28, width=28, mean=[0.0], std=[1.0])})
    assert not explain.uses_cam(c)
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)

    async def run(chunk):
        with torch.no_grad():
            return net(torch.from_numpy(chunk)).numpy()

    out = asyncio.run(run(x))
    target = explain.resolve_target(c, out[0], None)
    heat, method, passes = asyncio.run(explain.class_map(c, x, out, {}, target, run, passes=17,
                                                         max_batch=5))
    assert (method, passes, heat.shape) == ("occlusion", 17, (28, 28))
    with pytest.raises(ApiError, match="stage_3"):
        explain.choose_stages(c, ["stage_3"])
    assert [s.output for s in explain.choose_stages(c, ["stage_2"])] == ["stage_2"]
    assert explain.outputs_to_fetch(c, graph.spec.stages) == ("stage_1", "stage_2", "filters")


@pytest.mark.parametrize("geometry", [
    {"kernel_size": 5},
    {"kernel_size": 7, "stride": 2, "padding": 3, "bias": False},
    {"kernel_size": (3, 5), "padding": "same", "dilation": 2},
    {"kernel_size": (3, 5), "stride": (1, 2), "padding": (0, 1), "dilation": (2, 1)},
    {"kernel_size": 11, "stride": 4, "padding": 2},
])
def test_the_first_layers_maps_are_its_filters_applied_as_torch_applies_them(geometry):
    """The service computes the first conv layer's maps from the `filters` output and the card
    (no graph output: it would cost every prediction); they are torch's, for the layers of the
    catalogue's networks (cnn, resnet, alexnet) and a dilated, unevenly strided one."""
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(3, 6, **geometry)
    net = torch.nn.Sequential(layer, torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    graph = explain_graph(net.eval(), (3, 37, 41))
    conv = graph.spec.first_conv
    assert conv is not None and conv.module == "0"
    x = torch.randn(1, 3, 37, 41)
    with torch.no_grad():
        want = layer(x)[0].numpy()
    got = explain.first_layer_maps(conv, x[0].numpy(), graph.constants["filters"])
    assert conv.shape == list(want.shape) and got.shape == want.shape
    assert np.allclose(got, want, atol=1e-5)
