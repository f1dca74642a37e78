"""Several versions of one name: the alias's holder (the primary) and, while the registry's
rollout policy for that alias is active, a candidate beside it (serving.rollout).

`Routed` is the lifecycle of a served name that routes each request to a version: the one it
names (`Waldo-Model-Version`, v2's `model_version`), else the rollout's pick. `follow_policy`
reads the policy (on start and on every poll or reload) and loads, updates or drops the
candidate; a policy that cannot be followed (a version that does not exist, one that does not
load, another task) leaves what is served as it is, and says why (`policy_error`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextlib import contextmanager

from httpapi.errors import ApiError, shown
from serving import repository
from serving.lifecycle import Lifecycle, Prediction, Trace
from serving.repository import RepositoryError
from serving.rollout import Rollout, server_actor
from serving.runtime import LoadError

log = logging.getLogger("waldo.serving")

VERSION_HEADER = "Waldo-Model-Version"  # a request may name a version; every answer names its own


class Routed(Lifecycle):
    """A served name's lifecycle (the primary) with the rollout's candidate beside it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alias: str | None = None  # set by the manager for a NAME@ALIAS source
        self.rollout: Rollout | None = None
        self.policy = None  # the registry's rollout policy as last read (any state)
        self.policy_error: str | None = None  # why the last policy read could not be followed
        self.pulled: set[tuple[str, str]] = set()  # (candidate, set_at) this replica rolled back

    # -- which version answers ------------------------------------------------------------
    def versions(self) -> list[Lifecycle]:
        """The versions served now: the primary, then the candidate if there is one."""
        sides: list[Lifecycle] = [self] if self.model is not None else []
        if self.rollout is not None and self.rollout.candidate.model is not None:
            sides.append(self.rollout.candidate)
        return sides

    def side_for(self, version: str | None) -> Lifecycle | None:
        """The lifecycle serving `version`; None for no version asked; 404 for one not served."""
        if not version:
            return None
        self.loaded()  # 503 while nothing is served
        for side in self.versions():
            if side.version == version:
                return side
        served = ", ".join(s.version for s in self.versions()) or "none"
        raise ApiError(404, "unknown_version", f"model {self.name!r} has no version {shown(version)} "
                                               f"being served; it serves version(s) {served}")

    def route(self, headers: Mapping[str, str] | None = None, version: str | None = None) -> Lifecycle:
        """The version a request goes to: the one it names, else the rollout's pick (a canary's
        share, sticky by the policy's key header), else the primary."""
        # Header names in lower case: HTTP's headers match either way, gRPC's metadata keys are
        # lower case.
        if headers is not None and not version:
            version = headers.get(VERSION_HEADER.lower())
        side = self.side_for(version)
        if side is not None:
            return side
        rollout = self.rollout
        if rollout is None:
            return self
        key = headers.get(rollout.policy.key_header.lower()) if headers is not None else None
        return rollout.route(key)

    @contextmanager
    def request(self, protocol: str, side: Lifecycle | None = None, *,
                headers: Mapping[str, str] | None = None, version: str | None = None):
        """Around one request: routes it (`route`), yields its Trace; counted on the version
        that answered."""
        if side is None and (headers is not None or version):
            side = self.route(headers, version)
        with super().request(protocol, side) as trace:
            yield trace

    async def predict(self, read, trace: Trace) -> Prediction:
        rollout = self.rollout
        if rollout is not None and trace.side is rollout.candidate:
            if rollout.mode == "canary":
                return await rollout.canary(read, trace, self._primary_predict)
            return await Lifecycle.predict(rollout.candidate, read, trace)  # asked for by version
        return await self._primary_predict(read, trace)

    async def _primary_predict(self, read, trace: Trace) -> Prediction:
        rollout = self.rollout
        trace.side = self
        try:
            done = await Lifecycle.predict(self, read, trace)
        except ApiError as exc:
            if rollout is not None and exc.status >= 500:
                rollout.primary_failed(trace)
            raise
        except Exception:
            if rollout is not None:
                rollout.primary_failed(trace)
            raise
        if rollout is not None:
            rollout.after_primary(done, trace)
        return done

    # -- what callers see ---------------------------------------------------------------------
    def version_statistics(self, version: str | None = None) -> list[dict]:
        """The v2 statistics of each version served (or of the one asked for)."""
        side = self.side_for(version)
        if side is not None:
            return [side.statistics()]
        sides = self.versions() or [self]
        return [side.statistics() for side in sides]

    def describe_rollout(self) -> dict | None:
        """The rollout as callers see it: the policy, the candidate and its window."""
        if self.rollout is not None:
            return {**self.rollout.describe(), "error": self.policy_error}
        if self.policy is None and self.policy_error is None:
            return None
        policy = self.policy.model_dump(mode="json") if self.policy is not None else None
        return {"version": None, "active": False, "policy": policy, "error": self.policy_error}


# -- following the registry's policy ------------------------------------------------------------
def _read_policy(tracking_uri: str | None, name: str, alias: str):
    from serving.registry.client import registry_client
    from serving.registry.policy import get_policy

    return get_policy(registry_client(tracking_uri), name, alias)


def _end_policy(tracking_uri: str | None, name: str, alias: str, reason: str) -> None:
    from serving.registry.client import registry_client
    from serving.registry.policy import end_policy

    end_policy(registry_client(tracking_uri), name, alias, by=server_actor(),
               state="rolled-back", reason=reason)


async def follow_policy(manager, served: Routed) -> None:
    """Make `served`'s candidate what the registry's policy for its alias says (the policy is
    only read for a `NAME@ALIAS` source). Failures leave what is served and set policy_error."""
    alias = served.alias
    if alias is None or served.model is None:
        await drop_candidate(served)
        return
    s = manager.settings
    try:
        policy = await asyncio.to_thread(_read_policy, s.tracking_uri, served.name, alias)
    except Exception as exc:  # RegistryError, an unreachable registry
        _keep(served, f"cannot read the rollout policy of {served.name}@{alias}: {exc}")
        return
    served.policy = policy
    if served.rollout is not None and served.rollout.pulled is not None:
        served.pulled.add(_stamp(served.rollout.policy))  # rolled back here: never again
    stamp = _stamp(policy) if policy is not None else None
    if (policy is None or policy.state != "active" or policy.candidate == served.model.version
            or stamp in served.pulled):
        served.policy_error = None
        await drop_candidate(served)
        return
    rollout = served.rollout
    if rollout is not None and rollout.candidate.version == policy.candidate:
        if rollout.policy != policy:
            rollout.update(policy)
            log.info("rollout of %s v%s: now %s %g%%", served.name, policy.candidate, policy.mode,
                     policy.percent)
        served.policy_error = None
        return
    try:
        model = await asyncio.to_thread(_load_candidate, manager, served, policy.candidate)
    except (LoadError, RepositoryError) as exc:
        _keep(served, f"cannot serve candidate v{policy.candidate} of {served.name}: "
                      f"{manager.public(str(exc))}")
        return
    old, served.policy_error = served.rollout, None

    def on_rollback(reason: str, figures: dict[str, str]) -> None:
        window = ", ".join(f"{k} {v}" for k, v in figures.items())
        _end_policy(s.tracking_uri, served.name, alias, f"automatic rollback: {reason} ({window})")

    served.rollout = Rollout(served, policy, model, on_rollback)
    log.info("rollout of %s: v%s beside v%s, %s %g%%", served.name, policy.candidate,
             served.model.version, policy.mode, policy.percent)
    if old is not None:
        await old.stop()


def _stamp(policy) -> tuple[str, str]:
    """One rollout of one candidate (a policy set again later is another rollout)."""
    return policy.candidate, str(policy.set_at)


def _keep(served: Routed, line: str) -> None:
    if served.policy_error != line:
        log.warning("%s; what is served stays as it is", line)
    served.policy_error = line


def _load_candidate(manager, served: Routed, version: str):
    found = repository.fetch(f"models:/{served.name}/{version}", manager.settings.cache_dir,
                             manager.settings.tracking_uri)
    card = found.card()
    problem = served.model.card.incompatibility(card)
    if problem:
        raise LoadError(f"v{version} cannot replace v{served.model.version}: {problem}")
    return manager._load(found, served.source)


async def drop_candidate(served: Routed) -> None:
    """Serve the primary alone (the candidate's requests in flight finish first)."""
    rollout, served.rollout = served.rollout, None
    if rollout is not None:
        if rollout.pulled is not None:
            served.pulled.add(_stamp(rollout.policy))
        log.info("rollout of %s v%s ended; v%s serves alone", served.name, rollout.candidate.version,
                 served.version)
        await rollout.stop()
