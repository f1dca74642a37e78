"""The picture helpers (serving.pictures: numpy and Pillow only) and the torch side that feeds
them (training.tracking.explain): stages, class-map method, and that drawing never fails a run."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from serving import pictures


def _ink(image: Image.Image, box: tuple[int, int, int, int] | None = None) -> int:
    """How many pixels of the (cropped) image are not white."""
    a = np.asarray(image.crop(box) if box else image)
    return int((a < 250).any(axis=-1).sum())


def test_colormaps_run_from_first_to_last_anchor_and_clip():
    out = pictures.apply_colormap(np.array([[-1.0, 0.0, 1.0, 2.0]]))
    assert out.shape == (1, 4, 3) and out.dtype == np.uint8
    assert (out[0, 0] == pictures.HEAT[0]).all() and (out[0, 1] == pictures.HEAT[0]).all()
    assert (out[0, 2] == pictures.HEAT[-1]).all() and (out[0, 3] == pictures.HEAT[-1]).all()
    # a diverging map puts zero at its light middle, negative blue, positive red
    signed = pictures.apply_colormap(pictures.signed_range(np.array([-2.0, 0.0, 1.0])),
                                     pictures.DIVERGING)
    assert signed[1].min() > 230
    assert signed[0, 2] > signed[0, 0] and signed[2, 0] > signed[2, 2]


def test_each_filter_is_normalized_on_its_own():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 1, 5, 5)).astype(np.float32)
    w[1] = w[0] * 100  # same pattern, a hundred times the size
    tiles, how = pictures.filter_tiles(w, side=50)
    assert "blue < 0 < red" in how
    assert tiles[0].size == (50, 50)  # 5x5 upscaled by a whole factor
    assert np.array_equal(np.asarray(tiles[0]), np.asarray(tiles[1]))
    assert not np.array_equal(np.asarray(tiles[0]), np.asarray(tiles[2]))


def test_rgb_filters_are_shown_in_colour():
    w = np.zeros((2, 3, 3, 3), dtype=np.float32)
    w[0, 0] = 1.0  # all red
    w[1, 2, 1, 1] = 1.0  # a blue dot
    tiles, how = pictures.filter_tiles(w, side=30)
    assert how.startswith("RGB")
    red = np.asarray(tiles[0])
    assert (red[..., 0] == 255).all() and (red[..., 1:] == 0).all()
    centre = np.asarray(tiles[1])[15, 15]
    assert tuple(centre) == (0, 0, 255)


def test_filter_grid_is_upscaled_and_labelled():
    w = np.random.default_rng(1).normal(size=(8, 1, 5, 5))
    picture = pictures.filter_grid(w)
    assert picture.width >= 200 and picture.height >= 60
    # the title line above the tiles holds text
    assert _ink(picture, (0, 0, picture.width, 14)) > 50


def test_grid_lays_out_rows_with_captions():
    tiles = [Image.new("RGB", (40, 40), (0, 0, 0)) for _ in range(5)]
    plain = pictures.grid(tiles, columns=2)
    captioned = pictures.grid(tiles, ["one", "two", "three", "four", "five"], columns=2,
                              title="a title")
    assert plain.width < 3 * 50 and plain.height > 3 * 40  # 2 columns, 3 rows
    assert captioned.height > plain.height
    assert _ink(captioned) > _ink(plain)
    with pytest.raises(ValueError):
        pictures.grid([])


def test_overlay_is_brighter_where_the_map_is_high():
    image = np.full((20, 20), 100, dtype=np.uint8)
    heat = np.zeros((5, 5))
    heat[0, 0] = 1.0
    out = np.asarray(pictures.overlay(image, heat)).astype(int).sum(axis=-1)
    assert out.shape == (20, 20)
    assert out[:3, :3].mean() > out[10:, 10:].mean() + 50


def test_boxes_are_drawn_in_their_colours():
    image = Image.new("RGB", (100, 100), (0, 0, 0))
    out = np.asarray(pictures.draw_boxes(image, [((0.1, 0.2, 0.5, 0.5), pictures.TRUE_BOX, "7")]))
    assert tuple(out[20, 30]) == pictures.TRUE_BOX  # the top edge at y = 0.2
    assert tuple(out[45, 35]) == (0, 0, 0)  # inside stays


def test_map_tiles_show_the_most_active_channels_first():
    maps = np.zeros((20, 4, 4), dtype=np.float32)
    maps[7] = 5.0
    maps[3, 0, 0] = 9.0
    tiles, captions = pictures.map_tiles(maps, side=16, limit=3)
    assert len(tiles) == 3 and captions[:2] == ["#7", "#3"]
    sheet = pictures.feature_map_sheet(np.zeros((8, 8), np.uint8), [("stage 1", maps)])
    assert sheet.width >= 8 * 56 and sheet.height > 56 * 3


def test_peak_share_compares_the_mask_with_the_rest():
    heat = np.zeros((4, 4))
    heat[1:3, 1:3] = 1.0
    mask = heat > 0
    assert pictures.peak_share(heat + 0.1, mask) == pytest.approx(11.0)
    assert pictures.peak_share(heat, ~mask) == 0.0
    with pytest.raises(ValueError):
        pictures.peak_share(heat, np.ones_like(mask))


# --- the torch side ---------------------------------------------------------------------------
def test_stages_of_each_kind_of_network():
    import torch

    from training.models import create_model
    from training.models.heads import create_localizer
    from training.tracking import explain

    cases = {
        "cnn": (create_model("cnn", num_classes=10, in_channels=1, image_size=28), 28,
                ["features.1", "features.4"], "HiResCAM"),
        "resnet18": (create_model("resnet18", num_classes=10, in_channels=3, image_size=32), 32,
                     ["relu", "layer1", "layer2", "layer3", "layer4"], "Grad-CAM"),
        "localizer": (create_localizer("cnn", num_classes=10, in_channels=1, image_size=32), 32,
                      ["backbone.features.1", "backbone.features.4"], "HiResCAM"),
    }
    for name, (net, size, expected, method) in cases.items():
        net = explain.explainable(net)
        x = torch.randn(2, net_channels(net), size, size)
        with torch.no_grad():
            _, stages = explain.forward_with_stages(net, x)
        assert [s[0] for s in stages] == expected, name
        assert explain.class_map_method(net) == method, name
        heat = explain.grad_cam(net, stages[-1][1], x, [0, 1] if name != "localizer" else [5, 0])
        assert heat.shape == (2, size, size) and heat.max() <= 1.0 and heat.min() >= 0.0


def net_channels(net) -> int:
    from training.tracking.explain import first_conv

    return first_conv(net).in_channels


def test_explaining_leaves_the_network_alone():
    import torch

    from training.models import create_model
    from training.tracking import explain

    net = create_model("cnn", num_classes=10, in_channels=1, image_size=28)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copy = explain.explainable(net)
    assert all(m.inplace for m in net.modules() if hasattr(m, "inplace"))
    assert not any(m.inplace for m in copy.modules() if hasattr(m, "inplace"))
    explain.grad_cam(copy, copy.features[4], torch.randn(1, 1, 28, 28), [3])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_failure_to_draw_is_one_warning_and_never_fails_the_run(caplog):
    from torch import nn

    from training.tracking import explain

    task = SimpleNamespace(net=nn.Linear(3, 2), task="classify")  # no conv, no test set
    run = SimpleNamespace(run_id="r1", client=None)  # logging would fail: there is no client
    with caplog.at_level(logging.WARNING, logger="waldo.pictures"):
        explain.log_run_pictures(run, task, SimpleNamespace(test_set=None))
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "pictures not logged for run r1" in caplog.records[0].getMessage()
    assert "\n" not in caplog.records[0].getMessage()
