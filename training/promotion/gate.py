"""The verdict of a promotion: MLflow's `MetricThreshold`s, checked by
`mlflow.validate_evaluation_results` on the candidate's and the holder's scores.

The gate judges each task by its headline figure (`scores.HEADLINE`: accuracy, or object
accuracy for localization) and the candidate's latency:
- `min_accuracy`: `threshold` on the headline (the one figure a first promotion, with no
  holder, is judged by, with the latency bound);
- `min_delta`: a positive one is MLflow's `min_absolute_change`. MLflow takes only positive
  changes there, and a gate may allow a small loss (an int8 version of the holder: -0.005) or
  ask for no loss at all (0, the default), so a delta of 0 or below is a `threshold` on the
  metric `<headline>_delta`, the candidate's figure minus the holder's, which this module adds
  to the candidate's metrics;
- `min_relative_delta`: MLflow's `min_relative_change` (0 to 1);
- `max_latency_ms`: `threshold` on `latency_ms`, lower is better.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.promotion.scores import HEADLINE
from training.spec import PromoteSpec


@dataclass(frozen=True)
class Verdict:
    """Whether the thresholds hold, why (one line), and the metrics the gate compared."""

    passed: bool
    reason: str
    compared: dict[str, float]  # the candidate's metrics with the deltas added


def thresholds(spec: PromoteSpec, task: str, has_holder: bool) -> dict:
    """{metric: MetricThreshold} for this promotion; without a holder only the absolute ones."""
    from mlflow.models import MetricThreshold

    headline = HEADLINE[task]
    out = {}
    on_headline = {}
    if spec.min_accuracy is not None:
        on_headline["threshold"] = float(spec.min_accuracy)
    if has_holder:
        if spec.min_delta > 0:
            on_headline["min_absolute_change"] = float(spec.min_delta)
        else:
            out[f"{headline}_delta"] = MetricThreshold(threshold=float(spec.min_delta),
                                                       greater_is_better=True)
        if spec.min_relative_delta is not None:
            on_headline["min_relative_change"] = float(spec.min_relative_delta)
    if on_headline:
        out[headline] = MetricThreshold(greater_is_better=True, **on_headline)
    if spec.max_latency_ms is not None:
        out["latency_ms"] = MetricThreshold(threshold=float(spec.max_latency_ms),
                                            greater_is_better=False)
    return out


def judge(spec: PromoteSpec, task: str, candidate: dict[str, float],
          holder: dict[str, float] | None) -> Verdict:
    """Check the thresholds with `mlflow.validate_evaluation_results`."""
    import mlflow
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    headline = HEADLINE[task]
    compared = dict(candidate)
    if holder is not None and headline in candidate and headline in holder:
        compared[f"{headline}_delta"] = candidate[headline] - holder[headline]
        # MLflow looks up every checked metric in the baseline's, the delta too: the holder's
        # own change is none.
        holder = {**holder, f"{headline}_delta": 0.0}
    checks = thresholds(spec, task, holder is not None)
    if not checks:
        return Verdict(True, "no thresholds apply (a first promotion without --min-accuracy "
                             "or --max-latency-ms)", compared)
    from training.export.exporters import quiet_loggers

    try:
        with quiet_loggers("mlflow.models.evaluation.validation"):  # its "Validating..." lines
            mlflow.validate_evaluation_results(
                checks, EvaluationResult(compared, {}),
                EvaluationResult(holder, {}) if holder is not None else None)
    except ModelValidationFailedException as exc:
        return Verdict(False, "; ".join(" ".join(line.split())
                                        for line in exc.message.splitlines() if line.strip()),
                       compared)
    return Verdict(True, "thresholds held: " + "; ".join(
        f"{name} ({_described(t)})" for name, t in checks.items()), compared)


def _described(threshold) -> str:
    parts = []
    better = ">=" if threshold.greater_is_better else "<="
    if threshold.threshold is not None:
        parts.append(f"{better} {threshold.threshold:g}")
    if threshold.min_absolute_change is not None:
        parts.append(f"holder + {threshold.min_absolute_change:g}")
    if threshold.min_relative_change is not None:
        parts.append(f"holder x {1 + threshold.min_relative_change:g}")
    return ", ".join(parts)


__all__ = ["Verdict", "judge", "thresholds"]
