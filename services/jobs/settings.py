"""Jobs API settings: pydantic-settings, environment prefix `WALDO_JOBS_`."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class JobsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WALDO_JOBS_", extra="forbid")

    token: SecretStr = Field(description="bearer token every /v1 request must carry (required: this "
                                         "API launches work on the cluster)", min_length=16)
    ray_address: str = Field("http://127.0.0.1:8265", description="the Ray dashboard (job submission)")
    tracking_uri: str | None = Field(
        None, description="MLflow server the jobs log to, unless their spec names another")
    mlflow_ui_url: str | None = Field(None, description="MLflow UI for links (default: tracking_uri)")
    storage: str | None = Field(
        None, description="checkpoint storage for train and sweep jobs that name none; a cluster "
                          "of several nodes needs shared storage such as s3://bucket/path")
    entrypoint_num_cpus: float = Field(0, ge=0, description="CPUs reserved for each job's driver")


@lru_cache
def get_settings() -> JobsSettings:
    return JobsSettings()
