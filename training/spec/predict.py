"""A scoring run's spec (`waldo predict --model MODEL --output DEST SOURCE...` and the jobs API's
`kind: predict`): which model, which images, where the answers go, and how to run it. Validated
here, so the CLI and the jobs API refuse a bad value up front. Torch-free, like training.spec.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, NonNegativeInt, PositiveInt

from training.spec.fields import TRACKING_URI, Rules, SpecBase

DEFAULT_EXPERIMENT = "waldo-predict"
MAX_SOURCES = 1000  # SOURCE arguments of one run; a longer list belongs in a file listing images
REGISTRY_URI = r"models:/.+"  # a registry model, not a path (checked by serving.repository)


def _one_or_many(value: object) -> object:
    """A single source (a YAML `sources: /data/x` or a JSON string) is a list of one."""
    return [value] if isinstance(value, str) else value


class PredictSpec(SpecBase):
    """What `waldo predict --model` and a predict job do: score every image of `sources` with
    `model` and write the answers as Parquet to `output`, in-process or on Ray Data."""

    model: Annotated[str, Rules(kind="location", root="model", not_a_path=REGISTRY_URI)] = Field(
        min_length=1, description="models:/NAME@ALIAS, models:/NAME/VERSION, or a version folder "
        "written by `waldo export` (e.g. models/cnn/3)")
    sources: Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_one_or_many),
                       Rules(kind="location", root="data")] = Field(
        min_length=1, max_length=MAX_SOURCES, description="folders, s3:// prefixes, packs made by "
        "`waldo data pack`, files listing images (one path or s3:// URL a line) or image files")
    output: Annotated[str, Rules(kind="location", root="storage")] = Field(
        min_length=1, description="folder or s3://bucket/prefix for the Parquet parts, "
        "_errors.csv and _manifest.json; a run started again with the same model completes it")
    top_k: PositiveInt = Field(5, le=1000, description="classes kept per image (classification)")
    threshold: float = Field(0.5, ge=0, le=1, description="p_c at which a box is an object "
                             "(localization)")
    batch_size: PositiveInt = Field(64, le=8192, description="images per ONNX Runtime call")
    part_size: PositiveInt = Field(
        4096, le=1_000_000, description="images per committed Parquet part: at most what a killed "
        "run scores again")
    workers: Annotated[NonNegativeInt, Rules(bound="max_workers")] = Field(
        0, description="Ray Data scoring actors (0: in-process, on threads)")
    cpus_per_worker: PositiveInt = Field(
        1, le=256, description="CPUs of each scoring actor, and its ONNX Runtime threads")
    threads: PositiveInt | None = Field(
        None, le=256, description="in-process: decoding threads and ONNX Runtime threads "
        "(default: the machine's CPUs)")
    experiment: Annotated[str, Rules(kind="name")] = Field(
        DEFAULT_EXPERIMENT, min_length=1, max_length=200, description="MLflow experiment of the run")
    tracking_uri: Annotated[str | None, TRACKING_URI] = Field(
        None, description="MLflow tracking URI, also the registry of models:/ URIs (default: "
        "MLFLOW_TRACKING_URI or ./mlflow.db)")
    ray_address: Annotated[str | None, Rules(kind="location", server="ray_address")] = Field(
        None, description="Ray cluster to join with workers (default: RAY_ADDRESS, the `waldo "
        "cluster up` head, else a local Ray)")


__all__ = ["DEFAULT_EXPERIMENT", "MAX_SOURCES", "PredictSpec"]
