"""The evaluation half of a promotion: which data both versions are judged on, and their scores
through ONNX Runtime on its test split.

The data is the caller's (`--data`, `--data-dir`), else the candidate's source run's: the
run's spec.yaml says how its data module was built; without one, its MLflow dataset input
names the data set (and the folder, for a local one). The dataset's digest is computed again
here, so the evaluation run shows whether the data still is what the run trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from serving.modelcard import ModelCard
from serving.repository import ModelVersion
from training.errors import WaldoError
from training.promotion.scores import Scores, score
from training.spec import PromoteSpec, TrainSpec, build_spec

SPLIT = "test"


@dataclass
class JudgedData:
    """The data module both versions are scored on, and what is known about it."""

    spec: TrainSpec
    dm: object  # training.data.base.ImageDataModule, set up
    name: str
    source: str
    digest: str
    recorded_digest: str | None = None  # the candidate run's dataset input, when it has one
    sizes: dict[str, int] | None = None


def _folder_data(task: str) -> str:
    return "folder" if task == "classify" else "localization-folder"


def data_spec(spec: PromoteSpec, card: ModelCard, tracking_uri: str, downloads: Path,
              given: TrainSpec | None = None) -> tuple[TrainSpec, str | None]:
    """The TrainSpec whose data module judges the versions, and the digest the candidate's run
    recorded for its data (None when the caller named the data or the run recorded none).
    `given` (the spec of the run being exported) stands in for the run's spec.yaml."""
    size = card.input.height
    if spec.data is not None or spec.data_dir is not None:
        fields = {"task": card.task, "data": spec.data or _folder_data(card.task),
                  "image_size": size}
        if spec.data_dir is not None:
            fields["data_dir"] = spec.data_dir
        return build_spec(TrainSpec, None, fields), None
    if card.source_run is None and given is not None:
        return given, None
    if card.source_run is None:
        raise WaldoError(f"version {spec.version} of {spec.name!r} records no source run whose "
                         "test split could judge it; give the data (--data, --data-dir)")
    from training.export.source import RunSource

    run = RunSource(card.source_run, tracking_uri)
    inputs = run.run.inputs.dataset_inputs if run.run.inputs else []
    recorded = inputs[-1].dataset if inputs else None
    downloads.mkdir(parents=True, exist_ok=True)
    train_spec = given or run.train_spec(downloads)
    if train_spec is None:
        if recorded is None:
            raise WaldoError(f"run {card.source_run} (version {spec.version} of {spec.name!r}) "
                             "records neither its spec nor its data set; give the data "
                             "(--data, --data-dir)")
        fields = {"task": card.task, "data": recorded.name, "image_size": size}
        if recorded.source_type == "local":
            fields["data_dir"] = json.loads(recorded.source).get("uri")
        train_spec = build_spec(TrainSpec, None, fields)
    return train_spec, recorded.digest if recorded is not None else None


def judged_data(spec: PromoteSpec, card: ModelCard, tracking_uri: str, downloads: Path,
                given: TrainSpec | None = None) -> JudgedData:
    """The data module (set up) that judges versions with `card`'s labels and input size;
    `given` as in `data_spec`."""
    from training.data.provenance import describe
    from training.export.precision import scoring_data

    train_spec, recorded = data_spec(spec, card, tracking_uri, downloads, given)
    dm = scoring_data(train_spec, card.labels, card.input.height)
    if getattr(dm, f"{SPLIT}_set", None) is None or len(getattr(dm, f"{SPLIT}_set")) == 0:
        raise WaldoError(f"data {train_spec.data!r} has no {SPLIT} split to judge on")
    facts = describe(dm)
    return JudgedData(train_spec, dm, facts.name, facts.source, facts.digest, recorded,
                      dict(facts.sizes))


def score_version(version: ModelVersion, data: JudgedData, *, latency: bool = True) -> Scores:
    """The version's scores on the test split, fed as its card says (its own mean and std)."""
    from training.export.parity import ort_session
    from training.export.precision import batches

    card = version.card()
    data.dm.normalize_with(card.input.mean, card.input.std)
    try:
        session = ort_session(version.model_path)
    except Exception as exc:  # a file ONNX Runtime cannot load
        raise WaldoError(f"version {version.version} of {version.name!r}: ONNX Runtime cannot "
                         f"load its model: {' '.join(str(exc).split())[:300]}") from None
    return score(session, batches(data.dm, SPLIT), card.task, card.labels, latency=latency)


__all__ = ["JudgedData", "judged_data", "score_version"]
