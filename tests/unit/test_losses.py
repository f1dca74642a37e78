"""The localization loss, pinned with hand-computed cases.

Layout of both vectors: [p_c, x, y, w, h, p_1 .. p_K], the prediction after its activations.
Every expected value below is worked out by hand in the comments, not by calling the loss.
"""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import localization_loss

NAN = float("nan")

# An empty sample (p_c = 0): the target's other slots are "don't care" (here NaN and junk).
EMPTY_PRED = [0.3, 0.2, 0.4, 0.1, 0.5, 0.6, 0.4]
EMPTY_TARGET = [0.0, NAN, 7.0, -3.0, NAN, 1.0, 0.0]
EMPTY_MSE = 0.09  # (0.3 - 0)^2

# A present sample (p_c = 1), K = 2, class 0.
# diffs pred - target: -0.2, -0.1, 0.1, 0.1, -0.1, -0.3, 0.3
# squares: 0.04 + 0.01 + 0.01 + 0.01 + 0.01 + 0.09 + 0.09 = 0.26
FULL_PRED = [0.8, 0.1, 0.2, 0.5, 0.4, 0.7, 0.3]
FULL_TARGET = [1.0, 0.2, 0.1, 0.4, 0.5, 1.0, 0.0]
FULL_MSE = 0.26
FULL_GRAD = [-0.4, -0.2, 0.2, 0.2, -0.2, -0.6, 0.6]  # 2 (y_hat - y)


def t(rows, grad: bool = False, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype, requires_grad=grad)


# --- variant="mse" (the source's loss) ------------------------------------------------------
def test_empty_target_uses_only_the_objectness_term():
    loss = localization_loss(t([EMPTY_PRED]), t([EMPTY_TARGET]))
    assert loss.item() == pytest.approx(EMPTY_MSE, abs=1e-12)


@pytest.mark.parametrize("junk", [0.0, 1.0, -5.0, 123.0])
def test_empty_target_ignores_the_rest_of_both_vectors(junk):
    pred = [0.3] + [junk] * 4 + [0.5, 0.5]
    target = [0.0] + [junk * 2 + 1] * 4 + [junk, junk]
    loss = localization_loss(t([pred]), t([target]), reduction="none")
    assert loss.tolist() == pytest.approx([0.09], abs=1e-12)


def test_present_target_sums_every_squared_term():
    loss = localization_loss(t([FULL_PRED]), t([FULL_TARGET]))
    assert loss.item() == pytest.approx(FULL_MSE, abs=1e-12)


def test_reductions_on_a_mixed_batch():
    pred, target = t([EMPTY_PRED, FULL_PRED]), t([EMPTY_TARGET, FULL_TARGET])
    none = localization_loss(pred, target, reduction="none")
    assert none.shape == (2,)
    assert none.tolist() == pytest.approx([0.09, 0.26], abs=1e-12)
    total = localization_loss(pred, target, reduction="sum").item()
    mean = localization_loss(pred, target, reduction="mean").item()
    assert total == pytest.approx(0.35, abs=1e-12) and mean == pytest.approx(0.175, abs=1e-12)
    assert localization_loss(pred, target).item() == pytest.approx(0.175, abs=1e-12)  # default


def test_gradients_reach_only_the_terms_in_use():
    pred = t([EMPTY_PRED, FULL_PRED], grad=True)
    localization_loss(pred, t([EMPTY_TARGET, FULL_TARGET]), reduction="sum").backward()
    # empty sample: d/dp (p - 0)^2 = 2 * 0.3 at index 0, nothing anywhere else
    assert pred.grad[0].tolist() == pytest.approx([0.6, 0, 0, 0, 0, 0, 0], abs=1e-12)
    assert pred.grad[1].tolist() == pytest.approx(FULL_GRAD, abs=1e-12)
    # with mean over 2 samples every gradient halves
    pred.grad = None
    localization_loss(pred, t([EMPTY_TARGET, FULL_TARGET]), reduction="mean").backward()
    assert pred.grad[0].tolist() == pytest.approx([0.3, 0, 0, 0, 0, 0, 0], abs=1e-12)
    assert pred.grad[1].tolist() == pytest.approx([g / 2 for g in FULL_GRAD], abs=1e-12)


# --- variant="ce" ---------------------------------------------------------------------------
def test_ce_empty_sample_is_binary_cross_entropy_of_p_c():
    pred = t([EMPTY_PRED], grad=True)
    loss = localization_loss(pred, t([EMPTY_TARGET]), variant="ce")
    assert loss.item() == pytest.approx(-math.log(1 - 0.3), abs=1e-9)  # 0.356675
    loss.backward()
    # d/dp -log(1 - p) = 1 / (1 - p)
    assert pred.grad[0].tolist() == pytest.approx([1 / 0.7, 0, 0, 0, 0, 0, 0], abs=1e-9)


def test_ce_present_sample_by_hand():
    # p_c 0.8 -> -log 0.8; class 0 predicted 0.7 -> -log 0.7;
    # smooth L1 with beta 0.05 on the box diffs 0.02, 0.1, 0.1, 0.1:
    #   |d| < beta: 0.5 d^2 / beta = 0.5 * 0.0004 / 0.05 = 0.004; else |d| - beta/2 = 0.075
    pred = [0.8, 0.22, 0.2, 0.5, 0.4, 0.7, 0.3]
    target = [1.0, 0.2, 0.1, 0.4, 0.5, 1.0, 0.0]
    expected = -math.log(0.8) - math.log(0.7) + 0.004 + 3 * 0.075
    loss = localization_loss(t([pred]), t([target]), variant="ce")
    assert loss.item() == pytest.approx(expected, abs=1e-9)


def test_ce_reductions_on_a_mixed_batch():
    pred = [EMPTY_PRED, [0.8, 0.22, 0.2, 0.5, 0.4, 0.3, 0.7]]
    target = [EMPTY_TARGET, [1.0, 0.2, 0.1, 0.4, 0.5, 0.0, 1.0]]  # class 1 predicted 0.7
    a = -math.log(0.7)
    b = -math.log(0.8) - math.log(0.7) + 0.004 + 3 * 0.075
    none = localization_loss(t(pred), t(target), variant="ce", reduction="none")
    assert none.tolist() == pytest.approx([a, b], abs=1e-9)
    assert localization_loss(t(pred), t(target), variant="ce", reduction="sum").item() == \
        pytest.approx(a + b, abs=1e-9)
    assert localization_loss(t(pred), t(target), variant="ce").item() == \
        pytest.approx((a + b) / 2, abs=1e-9)


def test_ce_giou_box_term_is_zero_for_a_perfect_box():
    box = [0.1, 0.2, 0.3, 0.4]
    pred = t([[0.9, *box, 0.75, 0.25]])
    target = t([[1.0, *box, 1.0, 0.0]])
    loss = localization_loss(pred, target, variant="ce", box_loss="giou")
    assert loss.item() == pytest.approx(-math.log(0.9) - math.log(0.75), abs=1e-6)


def test_ce_giou_box_term_by_hand():
    # pred box [0, 0, .5, .5], true box [.25, .25, .5, .5] (xywh):
    # intersection .25 * .25 = .0625, union .25 + .25 - .0625 = .4375, IoU = 1/7;
    # enclosing box [0, 0, .75, .75] has area .5625; GIoU = 1/7 - (.5625 - .4375) / .5625
    giou = 0.0625 / 0.4375 - (0.5625 - 0.4375) / 0.5625
    pred = t([[0.9, 0.0, 0.0, 0.5, 0.5, 0.75, 0.25]])
    target = t([[1.0, 0.25, 0.25, 0.5, 0.5, 1.0, 0.0]])
    loss = localization_loss(pred, target, variant="ce", box_loss="giou")
    assert loss.item() == pytest.approx(-math.log(0.9) - math.log(0.75) + 1 - giou, abs=1e-6)


# --- "don't care" means don't care: nothing leaks out of the unused slots -------------------
@pytest.mark.parametrize("junk", [NAN, 1e30, float("inf"), -float("inf")],
                         ids=["nan", "huge", "inf", "-inf"])
@pytest.mark.parametrize("variant,box_loss", [("mse", "smooth_l1"), ("ce", "smooth_l1"),
                                              ("ce", "giou")])
def test_junk_in_an_empty_targets_dont_care_slots_changes_nothing(junk, variant, box_loss):
    """p_c = 0: loss and gradient are those of the objectness term alone, whatever the rest of
    the target holds. (The loss's docstring promises "terms that a sample does not use
    contribute no gradient".) In float32, the networks' dtype."""
    pred = t([EMPTY_PRED], grad=True, dtype=torch.float32)
    target = t([[0.0] + [junk] * 6], dtype=torch.float32)
    loss = localization_loss(pred, target, variant=variant, box_loss=box_loss)
    expected = 0.09 if variant == "mse" else -math.log(0.7)
    d_pc = 0.6 if variant == "mse" else 1 / 0.7
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all(), f"non-finite gradient {pred.grad.tolist()}"
    assert pred.grad[0].tolist() == pytest.approx([d_pc, 0, 0, 0, 0, 0, 0], abs=1e-6)


# --- misuse --------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"variant": "focal"}, "variant"),
    ({"reduction": "avg"}, "reduction"),
    ({"variant": "ce", "reduction": "avg"}, "reduction"),
    ({"variant": "ce", "box_loss": "l2"}, "box_loss"),
])
def test_invalid_options_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        localization_loss(t([FULL_PRED]), t([FULL_TARGET]), **kwargs)


@pytest.mark.parametrize("pred_shape,target_shape", [
    ((2, 7), (2, 8)),  # different K
    ((2, 7), (3, 7)),  # different batch
    ((7,), (7,)),  # not batched
    ((2, 5), (2, 5)),  # no class slot (K = 0)
    ((2, 1, 7), (2, 1, 7)),
])
def test_bad_shapes_raise_value_error(pred_shape, target_shape):
    with pytest.raises(ValueError, match="5\\+K"):
        localization_loss(torch.rand(pred_shape), torch.rand(target_shape))
