"""Alias history, kept in the registry itself: every alias move Waldo makes (publish, promote,
force, rollback, automatic rollback, a rollout's start and end) becomes one registered-model
tag, so the history travels with the model to any MLflow server, and `rollback` finds the
previous holder there.

A move is the tag `waldo.alias_move.<13-digit ms>.<4 hex>` with the move as JSON. The key
sorts by time; the 4 hex digits keep two writers in one millisecond apart.
"""

from __future__ import annotations

import secrets
import time
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
)
from serving.registry.names import alias_problem

MOVE_TAG_PREFIX = "waldo.alias_move."
Action = Literal["publish", "promote", "force", "rollback", "auto-rollback", "rollout"]
MAX_REASON = 2000  # characters of a reason kept (a tag value holds far more; a line should not)



class AliasMove(BaseModel):
    """One change of an alias: which version it pointed at before and after, who, when, why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alias: str
    from_version: str | None
    to_version: str | None
    action: Action
    at: datetime = Field(description="when, in UTC")
    by: str
    reason: str = ""
    evaluation_run: str | None = None
    detail: dict[str, str] = Field(default_factory=dict)

    def line(self) -> str:
        """The move as one line of `waldo history`."""
        when = self.at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        moved = f"{self.from_version or '-'} -> {self.to_version or '-'}"
        parts = [when, f"@{self.alias}", moved, self.action, f"by {self.by}"]
        if self.detail:
            parts.append(" ".join(f"{k}={v}" for k, v in sorted(self.detail.items())))
        if self.evaluation_run:
            parts.append(f"evaluation run {self.evaluation_run}")
        if self.reason:
            parts.append(f"({' '.join(self.reason.split())})")
        return "  ".join(parts)


def check_alias(alias: str) -> str:
    """`alias`, or RegistryError saying what is wrong with it."""
    if (problem := alias_problem(alias)) is not None:
        raise RegistryError(problem)
    return alias


def _moves(model) -> list[tuple[str, AliasMove]]:
    """(tag key, move) of every recorded move of a registered model, oldest first. A tag that
    does not parse (written by hand, or by a newer Waldo) is left out rather than failing."""
    found = []
    for key, value in (model.tags or {}).items():
        if key.startswith(MOVE_TAG_PREFIX):
            try:
                found.append((key, AliasMove.model_validate_json(value)))
            except ValidationError:
                continue
    return sorted(found, key=lambda pair: pair[0])


def history(client, name: str, alias: str | None = None) -> list[AliasMove]:
    """Every recorded move of `name` (of `alias` only, when given), oldest first."""
    moves = [move for _, move in _moves(registered_model(client, name))]
    return [m for m in moves if alias is None or m.alias == alias]


def record(client, name: str, move: AliasMove) -> None:
    """Add `move` to the history of `name`. Its key is later than every key already there, so
    the history's order is the order moves were recorded in, whatever the clocks say."""
    keys = [key for key, _ in _moves(registered_model(client, name))]
    ms = int(time.time() * 1000)
    if keys:
        ms = max(ms, int(keys[-1][len(MOVE_TAG_PREFIX):].split(".")[0]) + 1)
    key = f"{MOVE_TAG_PREFIX}{ms:013d}.{secrets.token_hex(2)}"
    client.set_registered_model_tag(name, key, move.model_dump_json())


def move_alias(client, name: str, alias: str, version: str, *, action: Action, by: str,
               reason: str = "", evaluation_run: str | None = None,
               detail: dict[str, str] | None = None) -> AliasMove:
    """Point `alias` of `name` at `version` and record the move. Refuses (RegistryError) an
    unknown model or version and an invalid alias name; if recording fails, the alias is put
    back where it was."""
    check_alias(alias)
    version = str(model_version(client, name, str(version)).version)
    before = holder(client, name, alias)
    move = AliasMove(alias=alias, from_version=before, to_version=version, action=action,
                     at=datetime.now(timezone.utc), by=by, reason=reason[:MAX_REASON],
                     evaluation_run=evaluation_run, detail=detail or {})
    try:
        client.set_registered_model_alias(name, alias, version)
    except Exception as exc:  # e.g. the server refused the alias
        raise RegistryError(f"cannot point {name}@{alias} at version {version}: {one_line(exc)}") from None
    try:
        record(client, name, move)
    except Exception:
        _restore(client, name, alias, before)
        raise
    return move


def _restore(client, name: str, alias: str, version: str | None) -> None:
    """Best effort: the alias as it was before a move whose record failed."""
    try:
        if version is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, version)
    except Exception:  # noqa: BLE001 - the failed record is the error to report
        pass


def holders(moves: list[AliasMove]) -> list[str]:
    """The alias's holders that a rollback walks back through, oldest first, replayed from its
    moves: a move to another version pushes it (and the version it left, when the history
    starts after the alias was first set), a rollback pops, and a move that leaves the holder
    where it was (a rollout's start or end) changes nothing."""
    stack: list[str] = []
    for move in moves:
        if move.from_version == move.to_version:
            continue
        if move.to_version is None:  # the alias was removed: nothing before it to go back to
            stack.clear()
            continue
        if move.action in ("rollback", "auto-rollback"):
            if stack and stack[-1] == move.from_version:
                stack.pop()
            if not stack or stack[-1] != move.to_version:
                stack.append(move.to_version)
            continue
        if not stack and move.from_version is not None:
            stack.append(move.from_version)
        elif stack and move.from_version is not None and stack[-1] != move.from_version:
            stack.append(move.from_version)  # moved outside Waldo in between
        stack.append(move.to_version)
    return stack


def rollback(client, name: str, alias: str, *, by: str, reason: str = "") -> AliasMove:
    """Point `alias` back at its previous holder and record it as a `rollback`; repeated
    rollbacks walk further back. RegistryError, with the alias's history in short, when there
    is nothing to go back to."""
    check_alias(alias)
    current = holder(client, name, alias)
    if current is None:
        known = ", ".join(f"{a} (version {v})" for a, v in sorted(aliases(client, name).items()))
        raise UnknownModel(f"model {name!r} has no alias {alias!r}; its aliases: {known or 'none'}")
    moves = history(client, name, alias)
    stack = holders(moves)
    if not stack or stack[-1] != current:  # the alias was moved outside Waldo last
        stack.append(current)
    if len(stack) < 2:
        shown = "; ".join(f"{m.from_version or '-'} -> {m.to_version or '-'} ({m.action})"
                          for m in moves[-5:]) or "no recorded moves"
        raise RegistryError(f"{name}@{alias} (version {current}) has no earlier holder to roll "
                            f"back to; its history: {shown}")
    return move_alias(client, name, alias, stack[-2], action="rollback", by=by, reason=reason)
