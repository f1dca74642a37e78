"""The fixed entrypoint of every job the jobs API submits to Ray: `python -m training.jobrunner`.

The job comes as data, never as a command line: the environment variable `WALDO_JOB` holds
`{"kind": "train"|"sweep"|"export"|"promote"|"predict", "spec": {...}}` (the job contract in
training.spec), validated again here with the same spec classes the CLI and the API use. The last line of
output is `WALDO_RESULT {json}`: the MLflow run and, when something was registered, the model
version, a promotion's verdict and evaluation run, and a scoring run's output and counts. The
API reads it from the job's logs.
A refused promotion is a result, not a failure: the job succeeds with `"verdict": "refused"`
(the API shows the results of jobs that succeeded).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from training.errors import WaldoError
from training.spec import JOB_ENV, JOB_RESULT_PREFIX, JOB_SPECS, build_spec


def _promotion_fields(promotion) -> dict[str, Any]:
    if promotion is None:
        return {}
    return {"verdict": promotion.verdict, "verdict_reason": promotion.reason,
            "evaluation_run": promotion.evaluation_run, "holder_version": promotion.holder}


def _export_fields(result) -> dict[str, Any]:
    if result is None:
        return {}
    return {"model_uri": result.model_uri, "model_name": result.name,
            "model_version": str(result.version), "alias": result.alias,
            **_promotion_fields(result.promotion)}


def run_job(kind: str, spec_data: dict[str, Any]) -> dict[str, Any]:
    if kind not in JOB_SPECS:
        raise WaldoError(f"unknown job kind {kind!r}; one of {', '.join(JOB_SPECS)}")
    if not isinstance(spec_data, dict):
        raise WaldoError(f"the job's spec must be a JSON object of field: value, not {spec_data!r:.80}")
    spec = build_spec(JOB_SPECS[kind], overrides=spec_data)
    if kind == "train":
        from training.running.pipeline import run

        result = run(spec)
        return {"run_id": result.run_id, "metrics": result.metrics, **_export_fields(result.export)}
    if kind == "sweep":
        from training.running.pipeline import run_sweep

        result = run_sweep(spec)
        return {"run_id": result.parent_run_id, "best_config": result.best_config,
                "best_metric": result.best_metric, "best_run_id": result.best_run_id,
                **_export_fields(result.export)}
    if kind == "predict":
        from training.scoring import predict

        scoring = predict(spec)
        print("\n".join(scoring.summary()))
        manifest = scoring.manifest
        return {"run_id": scoring.run_id, "model_name": scoring.model, "model_version": scoring.version,
                "model_uri": spec.model, "alias": None, "output": scoring.output,
                "images": scoring.images, "scored": scoring.scored, "errors": scoring.errors,
                "scored_before": scoring.before, "output_rows": manifest.get("scored"),
                "output_errors": manifest.get("errors"), "seconds": round(scoring.seconds, 3)}
    if kind == "promote":
        from training.promotion import promote

        promotion = promote(spec)
        print("\n".join(promotion.summary()))
        return {"model_name": promotion.name, "model_version": promotion.candidate,
                "alias": promotion.alias if promotion.moved else None,
                **_promotion_fields(promotion)}
    from training.export import export_run

    result = export_run(spec)
    print("\n".join(result.summary()))
    return {"run_id": spec.run, **_export_fields(result)}


def main() -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        job = json.loads(os.environ[JOB_ENV])
        if not isinstance(job, dict):
            raise WaldoError(f"{JOB_ENV} must hold a JSON object {{\"kind\": ..., \"spec\": {{...}}}}")
        outcome = run_job(job["kind"], job["spec"])
    except KeyError as exc:
        print(f"waldo job: error: {JOB_ENV} is missing or lacks {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"waldo job: error: {JOB_ENV} is not JSON: {exc}", file=sys.stderr)
        return 2
    except WaldoError as exc:
        print(f"waldo job: error: {exc}", file=sys.stderr)
        return 2
    print(JOB_RESULT_PREFIX + json.dumps(outcome, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
