"""The evidence of a promotion: one MLflow run in the experiment `waldo-promotions`, readable in
the MLflow UI.

It holds both sides' metrics side by side (`candidate_<metric>`, `holder_<metric>`; each also
logged against the version's LoggedModel, so it shows on the model's page), the confusion
matrices (PNG and JSON), the verdict and why (tags `waldo.verdict`: passed, refused or forced,
and `waldo.verdict_reason`), the thresholds (params), and the data it judged on (a dataset
input). It links to both versions: their LoggedModels are the run's model inputs, and the
candidate version gets the tag `waldo.evaluation_run`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from training.promotion.evaluate import SPLIT, JudgedData
from training.promotion.scores import Scores

EXPERIMENT = "waldo-promotions"
EVALUATION_RUN_TAG = "waldo.evaluation_run"


@dataclass(frozen=True)
class Side:
    """One version in the comparison: its number, LoggedModel id (None when the registry does
    not say) and scores."""

    version: str
    model_id: str | None
    scores: Scores


def logged_model_id(mv) -> str | None:
    """The LoggedModel behind a registered version (over REST only its source names it)."""
    model_id = getattr(mv, "model_id", None)
    source = str(getattr(mv, "source", "") or "")
    if not model_id and source.startswith("models:/m-"):
        model_id = source.removeprefix("models:/").split("/")[0]
    return model_id or None


def record_evaluation(client, *, name: str, alias: str, labels: list[str], candidate: Side,
                      holder: Side | None, data: JudgedData, compared: dict[str, float],
                      verdict: str, reason: str, params: dict[str, str]) -> tuple[str, str]:
    """Log the evaluation run; returns (run id, experiment id)."""
    from mlflow.entities import (
        Dataset,
        DatasetInput,
        InputTag,
        LoggedModelInput,
        Metric,
        Param,
        RunStatus,
        RunTag,
    )

    from training.tracking.runs import _experiment_id, source_type

    experiment_id = _experiment_id(client, EXPERIMENT)
    against = f"v{holder.version}" if holder else "no holder"
    run = client.create_run(experiment_id, run_name=f"{name} v{candidate.version} vs {against} "
                                                    f"({alias})")
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        metrics = [Metric(f"candidate_{k}", float(v), now, 0) for k, v in compared.items()]
        metrics += [Metric(k, float(v), now, 0, model_id=candidate.model_id,
                           dataset_name=data.name, dataset_digest=data.digest)
                    for k, v in candidate.scores.metrics.items() if candidate.model_id]
        if holder is not None:
            metrics += [Metric(f"holder_{k}", float(v), now, 0)
                        for k, v in holder.scores.metrics.items()]
            metrics += [Metric(k, float(v), now, 0, model_id=holder.model_id,
                               dataset_name=data.name, dataset_digest=data.digest)
                        for k, v in holder.scores.metrics.items() if holder.model_id]
        tags = {"waldo.verdict": verdict, "waldo.verdict_reason": reason[:4000],
                "waldo.model_name": name, "waldo.alias": alias,
                "waldo.candidate_version": candidate.version,
                "waldo.holder_version": holder.version if holder else "",
                "waldo.data_digest": data.digest,
                "waldo.data_digest_recorded": data.recorded_digest or ""}
        for start in range(0, len(metrics), 900):  # MLflow takes 1000 metrics per batch
            client.log_batch(run_id, metrics=metrics[start:start + 900])
        client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        dataset = Dataset(name=data.name, digest=data.digest, source_type=source_type(data.source),
                          source=json.dumps({"uri": data.source}),
                          profile=json.dumps({f"{k}_size": v for k, v in (data.sizes or {}).items()}))
        models = [LoggedModelInput(s.model_id) for s in (candidate, holder) if s and s.model_id]
        client.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag(
            "mlflow.data.context", SPLIT)])], models=models)
        _log_confusion(client, run_id, labels, candidate, holder)
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_model_version_tag(name, candidate.version, EVALUATION_RUN_TAG, run_id)
    return run_id, experiment_id


def _log_confusion(client, run_id: str, labels: list[str], candidate: Side,
                   holder: Side | None) -> None:
    """Each side's confusion matrix as a picture and, with the labels, as JSON."""
    import torch

    from training.tracking.viz import confusion_matrix

    sides = {"candidate": candidate, "holder": holder}
    found = {k: s for k, s in sides.items() if s is not None and s.scores.confusion}
    if not found:
        return
    client.log_dict(run_id, {"labels": labels, "rows": "true class", "columns": "predicted",
                             **{f"{k}_v{s.version}": s.scores.confusion for k, s in found.items()}},
                    "confusion.json")
    import matplotlib.pyplot as plt

    for key, side in found.items():
        figure = confusion_matrix(torch.tensor(side.scores.confusion), labels)
        figure.axes[0].set_title(f"{key}: version {side.version}, {SPLIT} split")
        client.log_figure(run_id, figure, f"confusion_{key}.png")
        plt.close(figure)


__all__ = ["EVALUATION_RUN_TAG", "EXPERIMENT", "Side", "logged_model_id", "record_evaluation"]
