"""The registry's pure rules, without a registry: the rollback stack replayed from an alias's
moves, when a card may replace another, alias names and the rollout policy's bounds."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from serving.modelcard import InputSpec, ModelCard, OutputSpec
from serving.registry.client import RegistryError
from serving.registry.moves import AliasMove, check_alias, holders
from serving.registry.policy import RolloutPolicy, RolloutSettings


def move(from_version, to_version, action="promote", alias="production") -> AliasMove:
    return AliasMove(alias=alias, from_version=from_version, to_version=to_version, action=action,
                     at=datetime.now(timezone.utc), by="tester")


def card(task="classify", labels=("cat", "dog"), shape=(3, 32, 32)) -> ModelCard:
    c, h, w = shape
    return ModelCard(name="m", task=task, labels=list(labels),
                     input=InputSpec(channels=c, height=h, width=w, mean=[0.5] * c, std=[0.2] * c),
                     outputs=[OutputSpec(name="logits", meaning="scores")])


@pytest.mark.parametrize("moves, expected", [
    ([], []),
    ([move(None, "1", "publish")], ["1"]),
    ([move(None, "1", "publish"), move("1", "2"), move("2", "3", "force")], ["1", "2", "3"]),
    # a rollback pops the holder it leaves; repeated ones walk further back
    ([move(None, "1"), move("1", "2"), move("2", "3"), move("3", "2", "rollback")], ["1", "2"]),
    ([move(None, "1"), move("1", "2"), move("2", "3"), move("3", "2", "rollback"),
      move("2", "1", "rollback")], ["1"]),
    # a new promotion after rollbacks pushes again
    ([move(None, "1"), move("1", "2"), move("2", "1", "rollback"), move("1", "4")], ["1", "4"]),
    # a rollout's start and end leave the holder where it was
    ([move(None, "1"), move("1", "2"), move("2", "2", "rollout"), move("2", "2", "auto-rollback")],
     ["1", "2"]),
    # the history starts after the alias was first set (by hand): the version it left counts
    ([move("7", "8")], ["7", "8"]),
    # the alias was moved outside Waldo between two recorded moves
    ([move(None, "1"), move("5", "6")], ["1", "5", "6"]),
    # the alias was removed: nothing before that to go back to
    ([move(None, "1"), move("1", None), move(None, "3")], ["3"]),
])
def test_holders_replays_the_moves_as_a_stack(moves, expected):
    assert holders(moves) == expected


def test_a_card_may_replace_an_equal_one_and_not_another_task_labels_or_shape():
    base = card()
    assert base.incompatibility(card()) is None
    # precision, architecture and normalization may change: the requests and answers do not
    assert base.incompatibility(base.model_copy(update={"precision": "int8", "architecture": "x"})) is None
    task = base.incompatibility(card(task="localize"))
    assert task is not None and "task" in task and "'localize'" in task and "'classify'" in task
    labels = base.incompatibility(card(labels=("cat", "bird")))
    assert labels is not None and "adds 'bird'" in labels and "drops 'dog'" in labels
    order = base.incompatibility(card(labels=("dog", "cat")))
    assert order is not None and "order" in order
    shape = base.incompatibility(card(shape=(1, 32, 32)))
    assert shape is not None and "1,32,32" in shape and "3,32,32" in shape
    for problem in (task, labels, order, shape):
        assert "\n" not in problem


@pytest.mark.parametrize("alias", ["v1", "V22", "latest", "a b", "", "prod/x"])
def test_aliases_mlflow_reserves_or_refuses_are_one_line_errors(alias):
    with pytest.raises(RegistryError, match=r"invalid alias") as caught:
        check_alias(alias)
    assert repr(alias) in str(caught.value)


@pytest.mark.parametrize("percent", [-0.1, 100.5, 1000])
def test_a_rollout_percent_outside_0_to_100_is_refused(percent):
    with pytest.raises(ValidationError, match="percent"):
        RolloutSettings(candidate="2", mode="canary", percent=percent)


def test_a_rollout_policy_round_trips_as_json_and_refuses_unknown_fields():
    policy = RolloutPolicy(candidate=3, mode="shadow", percent=100, window_s=5)
    assert policy.candidate == "3"
    assert RolloutPolicy.model_validate_json(policy.model_dump_json()) == policy
    with pytest.raises(ValidationError, match="extra"):
        RolloutSettings(candidate="2", mode="canary", percent=10, state="off")
    with pytest.raises(ValidationError, match="mode"):
        RolloutSettings(candidate="2", mode="blue-green", percent=10)


def test_a_move_reads_as_one_line():
    line = move("1", "2", "force").model_copy(update={"reason": "hot\nfix", "evaluation_run": "r1"}).line()
    assert "\n" not in line and "1 -> 2" in line and "force" in line and "hot fix" in line and "r1" in line
