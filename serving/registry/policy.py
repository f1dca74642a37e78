"""The rollout policy of one alias, kept in the registry so that every replica of the service
reads the same one: which candidate version gets a share of the alias's traffic (canary) or a
copy of it (shadow), and the bounds past which the service pulls the candidate again.

Stored as the registered-model tag `waldo.rollout.<alias>` with the policy as JSON. Ending a
rollout keeps the tag with state `off` or `rolled-back`, so a replica that polls later stops
too; starting and ending one are recorded in the alias's history (serving.registry.moves).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.registry.client import (
    RegistryError,
    UnknownModel,
    aliases,
    holder,
    model_version,
    one_line,
    registered_model,
    version_card,
)
from serving.registry.moves import AliasMove, check_alias, record

POLICY_TAG_PREFIX = "waldo.rollout."


class RolloutSettings(BaseModel):
    """What a caller sets of a rollout policy: how a candidate version shares an alias's
    traffic, and when the service pulls it (the bounds are per monitor window)."""

    # A JSON caller may give the candidate as 3 or "3".
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    alias: str = "production"
    candidate: str = Field(description="a version number of the same registered model")
    mode: Literal["canary", "shadow"]
    percent: float = Field(ge=0, le=100, description="canary: share of requests the candidate "
                           "answers; shadow: share of requests also sent to the candidate")
    key_header: str = Field("waldo-route-key", min_length=1,
                            description="requests with this header stick to one version")
    window_s: float = Field(30.0, gt=0, description="the monitor's window, seconds")
    min_requests: int = Field(20, ge=1, description="candidate requests a window needs before "
                              "it is judged")
    min_success_rate: float = Field(0.99, ge=0, le=1, description="candidate's, per window "
                                    "(Flagger's default request-success-rate)")
    max_error_rate_increase: float = Field(0.01, ge=0, le=1, description="candidate's error rate "
                                           "minus the primary's, per window")
    max_p99_ms: float = Field(500.0, gt=0, description="candidate's p99 latency, per window "
                              "(Flagger's default request-duration)")
    max_p99_ratio: float = Field(1.5, gt=0, description="candidate's p99 over the primary's")
    reason: str = Field("", max_length=2000, description="why, for the history")


class RolloutPolicy(RolloutSettings):
    """A rollout policy as the registry keeps it: the settings, and its state and who set it."""

    state: Literal["active", "rolled-back", "off"] = "active"
    set_by: str = ""
    set_at: datetime | None = None


def _tag(alias: str) -> str:
    return f"{POLICY_TAG_PREFIX}{alias}"


def get_policy(client, name: str, alias: str = "production") -> RolloutPolicy | None:
    """The policy of `name@alias` in the registry (in whatever state), or None."""
    raw = (registered_model(client, name).tags or {}).get(_tag(alias))
    if raw is None:
        return None
    try:
        return RolloutPolicy.model_validate_json(raw)
    except ValidationError as exc:
        raise RegistryError(f"the rollout policy of {name}@{alias} in the registry does not "
                            f"parse: {one_line(exc)}") from None


def set_policy(client, name: str, policy: RolloutPolicy, *, by: str) -> RolloutPolicy:
    """Store `policy` (active) for its alias and record the start in the history.

    Refuses (RegistryError) an unknown model, alias or candidate version, a candidate that is
    the alias's holder itself, and one whose card cannot replace the holder's (task, labels,
    input shape). The percent's range is the model's own (pydantic refuses it on the way in)
    and is checked again here for policies built without validation.
    """
    check_alias(policy.alias)
    if not 0 <= policy.percent <= 100:
        raise RegistryError(f"percent {policy.percent:g} is outside 0-100: give a share of "
                            "requests from 0 to 100")
    current = holder(client, name, policy.alias)
    if current is None:
        known = ", ".join(sorted(aliases(client, name))) or "none"
        raise UnknownModel(f"model {name!r} has no alias {policy.alias!r} to roll out behind; "
                            f"its aliases: {known}")
    candidate = str(model_version(client, name, policy.candidate).version)
    if candidate == current:
        raise RegistryError(f"version {candidate} already holds {name}@{policy.alias}; name "
                            "another version as the candidate")
    problem = version_card(client, name, current).incompatibility(version_card(client, name, candidate))
    if problem:
        raise RegistryError(f"version {candidate} of {name!r} cannot replace version {current} "
                            f"(@{policy.alias}): {problem}")
    stored = policy.model_copy(update={"candidate": candidate, "state": "active", "set_by": by,
                                       "set_at": datetime.now(timezone.utc)})
    try:
        client.set_registered_model_tag(name, _tag(policy.alias), stored.model_dump_json())
    except Exception as exc:
        raise RegistryError(f"cannot store the rollout policy of {name}@{policy.alias}: "
                            f"{one_line(exc)}") from None
    record(client, name, AliasMove(
        alias=policy.alias, from_version=current, to_version=current, action="rollout",
        at=stored.set_at, by=by, reason=policy.reason,
        detail={"mode": stored.mode, "percent": f"{stored.percent:g}", "candidate": candidate,
                "state": "active"}))
    return stored


def end_policy(client, name: str, alias: str, *, by: str,
               state: Literal["off", "rolled-back"], reason: str) -> None:
    """End the rollout of `name@alias`: keep its policy with `state` (so every replica stops
    sending the candidate traffic) and record it; `rolled-back` is recorded as the action
    `auto-rollback`. RegistryError when the alias has no active rollout."""
    if state not in ("off", "rolled-back"):
        raise RegistryError(f"state {state!r} cannot end a rollout: use off or rolled-back")
    policy = get_policy(client, name, alias)
    if policy is None or policy.state != "active":
        now = "none" if policy is None else f"it is {policy.state}"
        raise RegistryError(f"{name}@{alias} has no active rollout to end ({now})")
    ended = policy.model_copy(update={"state": state, "reason": reason, "set_by": by,
                                      "set_at": datetime.now(timezone.utc)})
    client.set_registered_model_tag(name, _tag(alias), ended.model_dump_json())
    current = holder(client, name, alias)
    record(client, name, AliasMove(
        alias=alias, from_version=current, to_version=current,
        action="auto-rollback" if state == "rolled-back" else "rollout", at=ended.set_at, by=by,
        reason=reason, detail={"mode": policy.mode, "percent": f"{policy.percent:g}",
                               "candidate": policy.candidate, "state": state}))
