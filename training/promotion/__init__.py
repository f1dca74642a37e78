"""The promotion gate: a registered version takes an alias (production) only with evidence.

One job per module:
    scores    an ONNX model scored through ONNX Runtime: the task's metrics, confusion, latency
    evaluate  which data judges the versions (the candidate run's test split by default)
    gate      the verdict, with MLflow's MetricThreshold and validate_evaluation_results
    record    the evaluation run in MLflow (experiment waldo-promotions)
    pipeline  `promote`, which strings them together and moves the alias, and its result

Importing this package is cheap: `promote` and `PromotionResult` load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.promotion.pipeline import PromotionResult, promote

__all__ = ["PromotionResult", "promote"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from training.promotion import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
