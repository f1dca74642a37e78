"""Jobs API settings: pydantic-settings, environment prefix `WALDO_JOBS_`.

The server, not a spec, decides where jobs track (`tracking_uri`), which cluster they run on
(`ray_address`), which folders and buckets they may touch (the `*_roots`) and how large they may
be (the `max_*` bounds). Lists come from the environment comma-separated:
`WALDO_JOBS_STORAGE_ROOTS=s3://waldo/ray,/mnt/runs`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.jobs.paths import BadLocation, normalize

ENV_PREFIX = "WALDO_JOBS_"
PROG = "waldo-jobs"
_SECRET_FIELDS = {"token"}

Roots = Annotated[list[str], NoDecode]


class JobsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    token: SecretStr = Field(description="bearer token every /v1 request must carry (required: this "
                                         "API launches work on the cluster)", min_length=16)
    ray_address: str = Field("http://127.0.0.1:8265", description="the Ray dashboard (job submission)")
    tracking_uri: str | None = Field(
        None, description="MLflow server every job logs to (a spec may not name another); also the "
                          "only store the API reads runs from")
    mlflow_ui_url: str | None = Field(None, description="MLflow UI for links (default: tracking_uri)")
    storage: str | None = Field(
        None, description="checkpoint storage for train and sweep jobs that name none; a cluster "
                          "of several nodes needs shared storage such as s3://bucket/path")
    output: str | None = Field(
        None, description="model repository folder for export jobs that name none (default: the "
                          "job's own `models` folder)")
    entrypoint_num_cpus: float = Field(0, ge=0, description="CPUs reserved for each job's driver")

    # Where a spec may point (paths.py): absolute folders and s3://bucket/prefix, comma-separated.
    # None configured: a spec may name no such path at all, only the server's defaults apply.
    # Which spec fields lie under which roots is each field's rule (`Rules(root=...)`).
    data_roots: Roots = Field(default_factory=list, description="roots for a spec's data_dir and "
                                                                "weights file")
    storage_roots: Roots = Field(
        default_factory=list, description="roots for a spec's storage and init_from checkpoint, and "
                                          "an export's checkpoint")
    model_roots: Roots = Field(default_factory=list, description="roots for an export's output")

    # How much one job may ask for.
    max_body_bytes: int = Field(2**20, gt=0, description="larger request bodies get 413")
    max_workers: int = Field(16, ge=0, description="Ray Train workers per job (or per trial)")
    max_gpus_per_worker: float = Field(8, ge=0, description="GPUs per Ray Train worker")
    max_epochs: int = Field(1000, ge=1, description="epochs per job (or per trial)")
    max_trials: int = Field(256, ge=1, description="trials per sweep")
    max_image_size: int = Field(1024, ge=1, description="image_size, in pixels per side")
    max_loader_workers: int = Field(16, ge=0, description="DataLoader processes per worker")

    @field_validator("data_roots", "storage_roots", "model_roots", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("data_roots", "storage_roots", "model_roots")
    @classmethod
    def _normalized(cls, roots: list[str]) -> list[str]:
        normalized = []
        for root in roots:
            try:
                normalized.append(normalize(root))
            except BadLocation as exc:
                raise ValueError(f"root {root!r} {exc}") from None
        return list(dict.fromkeys(normalized))


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def describe_error(exc: ValidationError) -> str:
    """Settings that do not validate, as one line naming each environment variable (a secret's
    value is never shown)."""
    parts = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if field == "token" and error["type"] in ("missing", "too_short", "string_too_short"):
            message = ("is required" if error["type"] == "missing" else "is too short") + \
                ": give 16 or more characters, e.g. from `openssl rand -hex 24`"
        elif error["type"] == "missing":
            message = "is required"
        elif field and field not in _SECRET_FIELDS and error["type"] != "value_error":
            message += f" (got {error.get('input')!r})"
        parts.append(f"{env_name(field)}: {message}" if field else message)
    return "; ".join(parts)


def error_line(exc: ValidationError) -> str:
    return f"{PROG}: error: {describe_error(exc)}"


@lru_cache
def get_settings() -> JobsSettings:
    return JobsSettings()
