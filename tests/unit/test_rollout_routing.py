"""The pure parts of rollouts (serving.rollout): routing, agreement and the window monitor."""

from __future__ import annotations

import random

import numpy as np
import pytest

from serving.modelcard import InputSpec
from serving.rollout import (
    BUCKETS,
    Bounds,
    Monitor,
    Router,
    box_iou,
    compare,
    convert_input,
    key_bucket,
    top1,
)


# -- routing --------------------------------------------------------------------------------
@pytest.mark.parametrize("percent", [0, 10, 37.5, 100])
def test_unkeyed_requests_go_to_the_candidate_at_its_share(percent):
    router = Router(percent, salt="cnn/2", rng=random.Random(7))
    share = sum(router.chosen() for _ in range(20_000)) / 20_000
    assert share == pytest.approx(percent / 100, abs=0.01)


def test_a_key_always_gets_the_same_answer_and_keys_split_at_the_share():
    router = Router(20, salt="cnn/2")
    keys = [f"user-{i}" for i in range(5000)]
    first = [router.chosen(key) for key in keys]
    assert [Router(20, salt="cnn/2").chosen(key) for key in keys] == first  # another replica agrees
    assert sum(first) / len(keys) == pytest.approx(0.20, abs=0.02)
    # A new rollout (another candidate) draws another cohort.
    other = [Router(20, salt="cnn/3").chosen(key) for key in keys]
    assert other != first


def test_key_buckets_are_stable_and_in_range():
    bucket = key_bucket("alice", "cnn/2")
    assert bucket == key_bucket("alice", "cnn/2") and 0 <= bucket < BUCKETS
    assert len({key_bucket(f"k{i}", "s") for i in range(1000)}) > 900


# -- agreement --------------------------------------------------------------------------------
def test_top1_of_a_classifier_and_a_localizer():
    logits = np.array([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]])
    assert top1("classify", logits).tolist() == [1, 0]
    y = np.array([[0.9, 0, 0, 1, 1, 0.1, 0.7, 0.2]])  # [p_c, x, y, w, h, p_0..p_2]
    assert top1("localize", y).tolist() == [1]


def test_box_iou():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=float)
    b = np.array([[1, 1, 2, 2], [0, 0, 1, 1], [5, 5, 1, 1]], dtype=float)
    assert box_iou(a, b) == pytest.approx([1 / 7, 1.0, 0.0])


def test_compare_counts_agreeing_rows_and_boxes():
    primary = np.array([[0.9, 0, 0, 1, 1, 0.8, 0.2], [0.9, 0, 0, 1, 1, 0.3, 0.7]])
    candidate = np.array([[0.9, 0, 0, 1, 1, 0.6, 0.4], [0.9, 0, 0, 2, 1, 0.9, 0.1]])
    found = compare("localize", primary, candidate)
    assert (found.rows, found.agreeing) == (2, 1) and found.iou == pytest.approx([1.0, 0.5])
    assert compare("classify", primary[:, 5:], candidate[:, 5:]).iou == []


def test_a_shadow_gets_the_primary_batch_as_its_own_card_would_have_made_it():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4)).astype(np.float32)
    a = InputSpec(channels=3, height=4, width=4, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    b = InputSpec(channels=3, height=4, width=4, scale=1.0, mean=[100, 110, 120], std=[50, 60, 70])

    def preprocess(spec):
        mean, std = np.reshape(spec.mean, (1, 3, 1, 1)), np.reshape(spec.std, (1, 3, 1, 1))
        return ((pixels * spec.scale - mean) / std).astype(np.float32)

    assert convert_input(preprocess(a), a, b) == pytest.approx(preprocess(b), abs=1e-3)
    same = preprocess(a)
    assert convert_input(same, a, a) is same


# -- the monitor ----------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def monitor(**bounds) -> tuple[Monitor, Clock]:
    clock = Clock()
    return Monitor(Bounds(**{"window_s": 10, "min_requests": 5, **bounds}), clock), clock


def test_errors_are_judged_as_soon_as_the_window_holds_enough_requests():
    m, _ = monitor()
    for _ in range(3):
        assert m.record(True, False) is None  # under min_requests: not judged yet
    assert m.record(True, True, 0.01) is None
    verdict = m.record(True, False)
    assert verdict is not None and "success rate 20.0%" in verdict and "5 candidate requests" in verdict


def test_a_healthy_candidate_is_never_pulled():
    m, clock = monitor()
    for i in range(200):
        clock.now = i * 0.2  # twenty windows
        assert m.record(False, True, 0.010) is None
        assert m.record(True, True, 0.011) is None


def test_error_rate_increase_over_the_primary():
    m, _ = monitor(min_success_rate=0.5, max_error_rate_increase=0.1)
    for _ in range(10):
        m.record(False, True, 0.01)
    for _ in range(8):
        assert m.record(True, True, 0.01) is None
    verdict = m.record(True, False)
    assert verdict is not None and "above the primary's" in verdict  # 1/9 = 11% > 0% + 10%


def test_latency_is_judged_when_the_window_closes():
    m, clock = monitor(max_p99_ms=100)
    for _ in range(10):
        m.record(False, True, 0.01)
        assert m.record(True, True, 0.2) is None  # slow, but the window is still open
    clock.now = 10
    verdict = m.record(True, True, 0.2)
    assert verdict is not None and "p99 latency 200.0 ms is above 100 ms" in verdict


def test_latency_ratio_against_the_primary():
    m, clock = monitor(max_p99_ratio=1.5)
    for _ in range(10):
        m.record(False, True, 0.010)
        m.record(True, True, 0.020)
    clock.now = 10
    verdict = m.record(False, True, 0.01)
    assert verdict is not None and "2.00x the primary's" in verdict


def test_a_window_with_too_few_candidate_requests_is_not_judged_and_starts_over():
    m, clock = monitor(max_p99_ms=100)
    for _ in range(4):
        m.record(True, True, 1.0)
    clock.now = 10
    assert m.record(False, True, 0.01) is None
    assert m.candidate.requests == 0 and m.primary.requests == 1  # a new window
    assert m.figures()["primary_requests"] == "1"
