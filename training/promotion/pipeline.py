"""`promote`: a registered version takes an alias only when it holds the thresholds against the
alias's current holder, on the same data, through ONNX Runtime.

The steps: fetch both versions (serving.repository.fetch); refuse a candidate whose card could
not replace the holder's (another task, labels or input shape; one line); score both on the
test split of the same data (training.promotion.evaluate); judge (training.promotion.gate);
record the evaluation run (training.promotion.record); then move the alias and record the move
in the alias history (serving.registry.moves), and end the alias's rollout when it was this
candidate's. A refused candidate stays registered, without the alias.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from serving.registry.client import RegistryError, actor, holder, model_version, registry_client
from serving.repository import RepositoryError, fetch
from training.errors import WaldoError
from training.promotion.evaluate import judged_data, score_version
from training.promotion.gate import judge, thresholds
from training.promotion.record import Side, logged_model_id, record_evaluation
from training.promotion.scores import HEADLINE
from training.spec import PromoteSpec, TrainSpec


@dataclass
class PromotionResult:
    """What `promote` decided and where the evidence is."""

    name: str
    alias: str
    candidate: str
    holder: str | None  # the version the alias pointed at before
    verdict: str  # passed, refused or forced
    reason: str
    moved: bool
    evaluation_run: str
    ui_hint: str
    headline: str  # the metric the task is judged by
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    holder_metrics: dict[str, float] = field(default_factory=dict)
    data: str = ""

    @property
    def refused(self) -> bool:
        return not self.moved

    def summary(self) -> list[str]:
        key = self.headline
        cand = self.candidate_metrics.get(key, float("nan"))
        lines = []
        if self.holder is None:
            lines.append(f"promotion of {self.name} version {self.candidate} to {self.alias!r} "
                         f"(no holder yet) on the {self.data} test split: {key} {cand:.4f}")
        else:
            held = self.holder_metrics.get(key, float("nan"))
            lines.append(f"promotion of {self.name} version {self.candidate} to {self.alias!r} "
                         f"against version {self.holder} on the {self.data} test split: {key} "
                         f"{cand:.4f} vs {held:.4f} ({100 * (cand - held):+.2f} points)")
        if "latency_ms" in self.candidate_metrics:
            lat = f"latency {self.candidate_metrics['latency_ms']:.2f} ms per image"
            if "latency_ms" in self.holder_metrics:
                lat += f" (holder {self.holder_metrics['latency_ms']:.2f} ms)"
            lines.append(lat)
        lines.append(f"verdict: {self.verdict}: {self.reason}")
        if self.moved:
            lines.append(f"alias {self.alias!r} -> version {self.candidate}")
        else:
            kept = f"version {self.holder}" if self.holder else "no version"
            lines.append(f"alias {self.alias!r} unchanged ({kept}); version {self.candidate} "
                         "stays registered without it")
        lines.append(f"evaluation run {self.evaluation_run}: {self.ui_hint}")
        return lines


def promote(spec: PromoteSpec, *, data_spec: TrainSpec | None = None,
            by: str | None = None) -> PromotionResult:
    """Judge version `spec.version` of `spec.name` against the holder of `spec.alias` and
    move the alias when the thresholds hold (or `spec.force`). `data_spec` (a run's spec)
    names the data when the caller knows it better than the candidate's card (an export of
    a bare checkpoint). A user error (unknown model, version or alias name, incompatible
    card, no data to judge on) raises WaldoError; a refusal is a result, not an error."""
    from serving.registry.moves import check_alias, move_alias
    from serving.registry.policy import end_policy, get_policy
    from training.tracking.runs import quiet_artifact_downloads, resolve_tracking_uri, ui_hint

    quiet_artifact_downloads()
    uri = resolve_tracking_uri(spec.tracking_uri)
    client = registry_client(uri)
    who = actor(by)
    try:
        check_alias(spec.alias)
        candidate_mv = model_version(client, spec.name, spec.version)
        held = holder(client, spec.name, spec.alias)
    except RegistryError as exc:
        raise WaldoError(str(exc)) from None
    if held == spec.version:
        raise WaldoError(f"{spec.name}@{spec.alias} already points at version {spec.version}; "
                         "nothing to promote")
    with tempfile.TemporaryDirectory(prefix="waldo-promote-") as tmp:
        cache = Path(tmp)
        candidate = _fetch(spec.name, spec.version, cache, uri)
        card = candidate.card()
        held_version = held_card = None
        if held is not None:
            held_version = _fetch(spec.name, held, cache, uri)
            held_card = held_version.card()
            problem = held_card.incompatibility(card)
            if problem:
                raise WaldoError(f"version {spec.version} of {spec.name!r} cannot replace "
                                 f"version {held} behind {spec.alias!r}: {problem}")
        data = judged_data(spec, card, uri, cache / "downloads", data_spec)
        candidate_scores = score_version(candidate, data)
        held_scores = score_version(held_version, data) if held_version is not None else None
    task = card.task
    verdict = judge(spec, task, candidate_scores.metrics,
                    held_scores.metrics if held_scores is not None else None)
    moved = verdict.passed or spec.force
    label = "passed" if verdict.passed else "forced" if spec.force else "refused"
    reason = verdict.reason if not spec.force else f"{verdict.reason} (forced: {spec.reason})"
    checks = thresholds(spec, task, held is not None)
    params = {"model": spec.name, "alias": spec.alias, "candidate_version": spec.version,
              "holder_version": held or "none", "data": data.spec.data, "split": "test",
              "images": candidate_scores.images, "by": who,
              **{f"threshold.{k}": str(t) for k, t in checks.items()}}
    if spec.force:
        params["force_reason"] = spec.reason
    held_side = None
    if held is not None:
        held_side = Side(held, logged_model_id(client.get_model_version(spec.name, held)),
                         held_scores)
    run_id, experiment_id = record_evaluation(
        client, name=spec.name, alias=spec.alias, labels=list(card.labels),
        candidate=Side(spec.version, logged_model_id(candidate_mv), candidate_scores),
        holder=held_side, data=data, compared=verdict.compared, verdict=label, reason=reason,
        params=params)
    if moved:
        try:
            move_alias(client, spec.name, spec.alias, spec.version,
                       action="force" if spec.force else "promote", by=who,
                       reason=spec.reason or verdict.reason, evaluation_run=run_id)
            policy = get_policy(client, spec.name, spec.alias)
            if policy is not None and policy.state == "active" and policy.candidate == spec.version:
                end_policy(client, spec.name, spec.alias, by=who, state="off", reason="promoted")
        except RegistryError as exc:
            raise WaldoError(str(exc)) from None
    return PromotionResult(
        spec.name, spec.alias, spec.version, held, label, reason, moved, run_id,
        ui_hint(uri, experiment_id, run_id), HEADLINE[task], dict(candidate_scores.metrics),
        dict(held_scores.metrics) if held_scores is not None else {}, data.spec.data)


def _fetch(name: str, version: str, cache: Path, uri: str):
    try:
        return fetch(f"models:/{name}/{version}", cache, tracking_uri=uri)
    except RepositoryError as exc:
        raise WaldoError(str(exc)) from None


__all__ = ["PromotionResult", "promote"]
