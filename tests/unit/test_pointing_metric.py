"""The pointing game's arithmetic (training/tracking/pointing.py), on hand-made maps and boxes."""

from __future__ import annotations

import numpy as np
import pytest

from training.tracking.pointing import peaks, pointing_game, random_peak_share, sampled_baseline

SIDE = 20


def spot(row: int, col: int, side: int = SIDE) -> np.ndarray:
    """A map that is 0 everywhere but 1 at (row, col)."""
    heat = np.zeros((side, side), np.float32)
    heat[row, col] = 1.0
    return heat


def whole_pixels(x: int, y: int, w: int, h: int, side: int = SIDE) -> list[float]:
    """A box of whole pixels as fractions of the image, as the localization targets hold it."""
    return [x / side, y / side, w / side, h / side]


BOX = whole_pixels(4, 6, 5, 3)  # columns 4..8, rows 6..8


def test_a_peak_inside_the_box_counts_and_one_outside_does_not():
    maps = np.stack([spot(7, 6), spot(2, 2), spot(6, 4), spot(8, 8), spot(9, 6), spot(7, 9)])
    game = pointing_game(maps, np.array([BOX] * len(maps)))
    # inside, outside, the top-left and the bottom-right corner pixels, one row below, one
    # column right of the box
    assert (game.scored, game.hits) == (6, 3)
    assert game.share == pytest.approx(0.5)


def test_only_scored_images_count():
    maps = np.stack([spot(7, 6), spot(0, 0), spot(0, 0)])
    game = pointing_game(maps, np.array([BOX] * 3), np.array([True, False, False]))
    assert (game.scored, game.hits, game.share) == (1, 1, 1.0)
    nothing = pointing_game(maps, np.array([BOX] * 3), np.zeros(3, bool))
    assert nothing.scored == 0 and np.isnan(nothing.share) and np.isnan(nothing.baseline)


def test_the_peak_is_the_argmax_and_the_first_on_ties():
    heat = spot(7, 6) * 0.5
    heat[15, 15] = 0.9  # the brightest pixel decides, not the mass
    tied = np.zeros((SIDE, SIDE), np.float32)
    tied[[3, 7], [10, 6]] = 1.0  # (3, 10) comes first in row-major order
    rows, cols = peaks(np.stack([heat, tied, np.zeros((SIDE, SIDE))]))
    assert rows.tolist() == [15, 3, 0] and cols.tolist() == [15, 10, 0]
    game = pointing_game(np.stack([heat, tied, np.zeros((SIDE, SIDE))]), np.array([BOX] * 3))
    assert (game.hits, game.flat) == (0, 1)


def test_the_baseline_is_the_mean_share_of_the_image_the_boxes_cover():
    boxes = np.array([whole_pixels(4, 6, 5, 3), whole_pixels(0, 0, 10, 10),
                      whole_pixels(15, 2, 5, 18)])
    maps = np.stack([spot(0, 0)] * 3)
    game = pointing_game(maps, boxes, np.array([True, True, False]))
    assert game.baseline == pytest.approx(np.mean([15 / 400, 100 / 400]))
    shares = random_peak_share(boxes, (SIDE, SIDE))
    assert shares == pytest.approx(boxes[:, 2] * boxes[:, 3])
    # a box that stops halfway across a pixel holds only the pixels whose centres it covers
    half = random_peak_share(np.array([[0.0, 0.0, 0.5 / SIDE, 1.0], [0.0, 0.0, 0.4 / SIDE, 1.0]]),
                             (SIDE, SIDE))
    assert half == pytest.approx([1 / SIDE, 0.0])
    # drawing random pixels agrees with the exact figure, and is the same for the same seed
    drawn = sampled_baseline(boxes, (SIDE, SIDE), draws=4000, seed=3)
    assert drawn == pytest.approx(shares.mean(), abs=0.02)
    assert drawn == sampled_baseline(boxes, (SIDE, SIDE), draws=4000, seed=3)


def test_a_coarse_map_is_scored_where_its_cells_sit_on_the_input():
    """A 4 x 4 map whose cells are centred 5 + 2 * i input pixels in (a 5 x 5 conv, then a
    stride-2 pool: `explain.stage_grid`) on a 20 x 20 image."""
    grid = ((5.0, 2.0), (5.0, 2.0))
    cells = np.zeros((2, 4, 4), np.float32)
    cells[0, 1, 1] = cells[1, 3, 3] = 1.0  # centred on input points (7, 7) and (11, 11)
    box = whole_pixels(6, 6, 2, 2)  # pixels 6..7: holds (7, 7), not (11, 11)
    game = pointing_game(cells, np.array([box, box]), grid=grid, image=(SIDE, SIDE), draws=500)
    assert (game.scored, game.hits) == (2, 1)
    # stretched over the image instead, cell (1, 1) would sit at (7.5, 7.5) and (3, 3) at
    # (17.5, 17.5): the grid, not the map's shape, says where a cell is
    assert game.baseline == pytest.approx(1 / 16)  # one of the 16 cell centres lies in the box
    assert game.sampled == pytest.approx(1 / 16, abs=0.03)


def test_random_maps_score_about_the_baseline_and_a_map_of_the_object_scores_all():
    rng = np.random.default_rng(0)
    corners = rng.integers(0, SIDE - 8, size=(2000, 2))
    sizes = rng.integers(2, 8, size=(2000, 2))
    boxes = np.array([whole_pixels(x, y, w, h) for (x, y), (w, h) in zip(corners, sizes)])
    noise = pointing_game(rng.random((2000, SIDE, SIDE)), boxes)
    assert noise.share == pytest.approx(noise.baseline, abs=0.03)
    objects = np.stack([spot(y + h // 2, x + w // 2) for (x, y), (w, h) in zip(corners, sizes)])
    game = pointing_game(objects, boxes, method="test")
    assert game.share == 1.0 and game.ratio == pytest.approx(1 / game.baseline)
    assert game.method in game.line() and f"{game.hits}/{game.scored}" in game.line()


def test_the_centre_baseline_is_the_share_of_boxes_over_the_middle_pixel():
    boxes = np.array([whole_pixels(8, 8, 4, 4), whole_pixels(0, 0, 5, 5)])
    assert pointing_game(np.stack([spot(0, 0)] * 2), boxes).centre == 0.5


def test_shapes_that_do_not_match_are_refused():
    with pytest.raises(ValueError, match=r"maps must be \(N, h, w\)"):
        pointing_game(np.zeros((SIDE, SIDE)), np.array([BOX]))
    with pytest.raises(ValueError, match="boxes must be"):
        pointing_game(np.zeros((2, SIDE, SIDE)), np.array([BOX]))
    with pytest.raises(ValueError, match="scored must be"):
        pointing_game(np.zeros((1, SIDE, SIDE)), np.array([BOX]), np.ones(2, bool))


def test_the_arithmetic_needs_no_torch(loaded_modules):
    """The service can score its own (occlusion) maps: the module is numpy only."""
    loaded = loaded_modules("import training.tracking.pointing")
    assert "numpy" in loaded
    assert not loaded & {"torch", "torchvision", "pytorch_lightning", "mlflow", "captum"}, loaded


def _receptive_field_centres(net, layer, side: int, cell: tuple[int, int]):
    """The centre of the input window that `layer`'s output cell (row, col) is computed from,
    found without any geometry: a copy of `net` with every conv weight positive and constant,
    batch norms reset and max pools made average pools (so every input pixel of the window
    reaches the cell), and the bounding box of the input gradient. None where the window is
    cut by the image's edge (its centre is then not the box's)."""
    import copy

    import torch
    from torch import nn

    probe = copy.deepcopy(net).eval()
    for module in list(probe.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode))
        if isinstance(module, nn.Conv2d):
            nn.init.constant_(module.weight, 1.0 / module.weight[0].numel())
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
            module.reset_running_stats()
    target = dict(probe.named_modules())[next(n for n, m in net.named_modules() if m is layer)]
    seen = []

    class Enough(Exception):
        pass

    def stop(module, args, output):
        seen.append(output)
        raise Enough

    handle = target.register_forward_hook(stop)
    x = torch.ones(1, 1, side, side, requires_grad=True)
    try:
        probe(x)
    except Enough:
        pass
    finally:
        handle.remove()
    seen[0][0, :, cell[0], cell[1]].sum().backward()
    rows, cols = torch.nonzero(x.grad[0, 0] > 0, as_tuple=True)
    if rows.min() == 0 or cols.min() == 0 or rows.max() == side - 1 or cols.max() == side - 1:
        return None
    return ((rows.min() + rows.max() + 1) / 2).item(), ((cols.min() + cols.max() + 1) / 2).item()


@pytest.mark.parametrize("model, side", [("cnn", 64), ("resnet18", 128), ("googlenet", 160)])
def test_stage_grid_puts_each_cell_on_the_centre_of_its_receptive_field(model, side):
    """`explain.stage_grid` follows kernels, strides, padding, residual sums (resnet) and
    concatenations (googlenet's inception blocks): the centre it gives a stage's middle cell is
    the centre of the input window the cell is computed from."""
    import torch

    from training.models.heads import create_localizer
    from training.tracking import explain

    torch.manual_seed(0)
    net = explain.explainable(create_localizer(model, num_classes=3, in_channels=1,
                                               image_size=side))
    x = torch.zeros(1, 1, side, side)
    with torch.no_grad():
        _, stages = explain.forward_with_stages(net, x)
    checked = []
    for name, layer, output in stages:
        cell = (output.shape[-2] // 2, output.shape[-1] // 2)
        centre = _receptive_field_centres(net, layer, side, cell)
        if centre is None:  # the windows only grow from stage to stage
            break
        (start_y, step_y), (start_x, step_x) = explain.stage_grid(net, layer, x)
        assert (start_y + step_y * cell[0], start_x + step_x * cell[1]) == \
            pytest.approx(centre), name
        checked.append(name)
    assert len(checked) >= 2, f"only {checked} of {[s[0] for s in stages]} were checked"


def test_a_localizer_is_explained_as_its_own_head_pools():
    """A resnet localizer's head is dense on its pooled grid (the backbone's global pool goes
    unused): HiResCAM, as for any dense head; Grad-CAM only where its grid is one cell."""
    from training.models.heads import create_localizer
    from training.tracking import explain

    dense = create_localizer("resnet18", num_classes=3, in_channels=1, image_size=64)  # 2 x 2
    single = create_localizer("resnet18", num_classes=3, in_channels=1, image_size=32)  # 1 x 1
    assert explain.class_map_method(dense) == "HiResCAM"
    assert explain.class_map_method(single) == "Grad-CAM"
