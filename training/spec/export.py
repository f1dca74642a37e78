"""An export's spec: which checkpoint, and how to write, check and register it, validated here
so that the CLI and the jobs API refuse a bad value up front; and the choice lists of an export
(one place; `training.export` imports them). Torch-free, like training.spec.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, model_validator

from training.spec.fields import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    TRACKING_URI,
    AliasName,
    ModelName,
    Opset,
    Rules,
    SpecBase,
)
from training.spec.specs import PUBLISH_HELP, publish_field

# --- the choice lists of an export (one place; `training.export` imports them) ---------------
EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
ExportPrecision = Literal["fp32", "fp16", "int8"]
EXPORTERS = ("auto", "torchscript", "dynamo")
Exporter = Literal["auto", "torchscript", "dynamo"]
DEFAULT_ATOL = 1e-4
DEFAULT_MAX_DROP = 0.01  # validation accuracy (as a fraction) that fp16/int8 may lose


class ExportSpec(SpecBase):
    """What `waldo export` and an export job do: which checkpoint, and how to write, check and
    register it. Validated here, so the CLI and the jobs API refuse a bad value up front."""

    run: Annotated[str | None, Rules(kind="name")] = Field(
        None, min_length=1, description="MLflow run whose best checkpoint to export")
    checkpoint: Annotated[str | None, Rules(kind="location", root="storage")] = Field(
        None, min_length=1, description="a .ckpt file written by `waldo train`")
    name: ModelName | None = Field(
        None, description="model name in the repository and the registry "
        "(default: the architecture, e.g. cnn, or cnn-localize)")
    opset: Opset = Field(DEFAULT_OPSET, description=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}")
    precision: ExportPrecision = Field(
        "fp32", description="fp16 and int8 are scored against fp32 on the validation split")
    output: Annotated[str, Rules(kind="location", root="model")] = Field(
        "models", min_length=1, description="model repository folder (not with --publish: a "
        "published version is written only to the registry)")
    publish: bool = publish_field(PUBLISH_HELP)
    alias: AliasName | None = Field(
        None, description="then promote the new version to this MLflow alias (e.g. production) "
        "through the promotion gate, as `waldo promote` does; implies publish; a refused "
        "promotion keeps the version without the alias and exits 1")
    tracking_uri: Annotated[str | None, TRACKING_URI] = Field(
        None, description="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    atol: PositiveFloat = Field(DEFAULT_ATOL, description="largest |onnxruntime - torch| accepted")
    max_drop: NonNegativeFloat = Field(
        DEFAULT_MAX_DROP, description="validation accuracy fp16/int8 may lose, as a fraction")
    exporter: Exporter = Field(
        "auto", description="auto: TorchScript (fast), dynamo where it cannot")
    explain: bool = Field(
        True, description="also write the outputs that explain an answer (each conv stage's "
        "maps, the first layer's filters, the CAM weights of a globally pooled head); prediction "
        "never asks for them and costs the same")

    @model_validator(mode="after")
    def _one_source(self) -> ExportSpec:
        if (self.checkpoint is None) == (self.run is None):
            raise ValueError("give exactly one of run (an MLflow run id) or checkpoint (a .ckpt path)")
        return self

    @property
    def registers(self) -> bool:
        """Whether this export becomes a registered model version (`alias` implies it)."""
        return self.publish or self.alias is not None


__all__ = ["DEFAULT_ATOL", "DEFAULT_MAX_DROP", "EXPORTERS", "EXPORT_PRECISIONS", "ExportSpec"]
