"""A promotion's spec: which registered version should take which alias, on which data it is
judged against the alias's current holder, and the thresholds it must hold. Validated here, so
that `waldo promote`, `export --publish --alias` and the jobs API refuse a bad value up front.
Torch-free, like the rest of training.spec.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, NonNegativeFloat, PositiveFloat, model_validator

from training.spec.fields import TRACKING_URI, AliasName, ModelName, Rules, SpecBase

DEFAULT_ALIAS = "production"
DEFAULT_MIN_DELTA = 0.0  # the candidate may not score below the holder


def _number_as_text(value: object) -> object:
    """A version given as a number (YAML `version: 3`, JSON `"version": 3`) is its text."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_version(value: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]{0,8}", value):
        raise ValueError("is not a version number; give a registered version, e.g. 3")
    return value


VersionNumber = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_check_version)]


class PromoteSpec(SpecBase):
    """What `waldo promote` and a promote job do: judge version `version` of `name` against the
    holder of `alias` on the same data, and move the alias when the thresholds hold."""

    name: ModelName = Field(description="registered model name (e.g. cnn)")
    version: VersionNumber = Field(description="the candidate version number")
    alias: AliasName = Field(DEFAULT_ALIAS, description="the alias to move")
    data: Annotated[str | None, Rules(kind="name")] = Field(
        None, min_length=1, description="data set to judge both on, as --data of `waldo train` "
        "(default: the candidate run's own data, its test split)")
    data_dir: Annotated[str | None, Rules(kind="location", root="data")] = Field(
        None, min_length=1, description="folder of the data set (with --data folder, or alone "
        "for an image folder)")
    min_accuracy: float | None = Field(
        None, ge=0, le=1, description="the candidate's accuracy (localization: object accuracy) "
        "must reach this, as a fraction; also the bound of a first promotion")
    min_delta: float = Field(
        DEFAULT_MIN_DELTA, ge=-1, le=1, description="candidate minus holder accuracy must reach "
        "this (negative: a loss allowed, e.g. -0.005 for an int8 version)")
    min_relative_delta: NonNegativeFloat | None = Field(
        None, le=1, description="candidate over holder accuracy must gain this share "
        "(0.01: one percent better)")
    max_latency_ms: PositiveFloat | None = Field(
        None, description="the candidate's median ONNX Runtime latency for one image, ms")
    force: bool = Field(False, description="move the alias even when the thresholds fail "
                        "(needs --reason; recorded)")
    reason: str = Field("", max_length=2000, description="why: recorded in the alias history")
    tracking_uri: Annotated[str | None, TRACKING_URI] = Field(
        None, description="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)")

    @model_validator(mode="after")
    def _forced_with_reason(self) -> PromoteSpec:
        if self.force and not self.reason.strip():
            raise ValueError("force needs a reason (--reason TEXT): it is recorded in the "
                             "alias history")
        return self


__all__ = ["DEFAULT_ALIAS", "PromoteSpec"]
