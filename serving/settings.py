"""Service settings: pydantic-settings, environment prefix `WALDO_`, one cached instance.

Every field is also an environment variable, `WALDO_<FIELD>` (e.g. `WALDO_MAX_BATCH_SIZE=16`).
Tests and `waldo serve` build a `Settings` themselves and hand it to `create_app`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GPU_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def _split(value):
    """Lists from the environment are comma-separated: `WALDO_MODELS=./models,digits@production`."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WALDO_", extra="forbid")

    # What to serve.
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["./models"],
        description="model sources: repository folders (<root>/<name>/<version>/), or registry "
                    "models as NAME@ALIAS, NAME/VERSION or models:/NAME@ALIAS",
    )
    cache_dir: str = Field("./.waldo-cache/models", description="where registry models are downloaded")
    tracking_uri: str | None = Field(None, description="MLflow registry; default: MLFLOW_TRACKING_URI")
    poll_interval_s: float = Field(
        0.0, ge=0, description="check sources for a new version this often (0: only on /reload)")

    # ONNX Runtime.
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [GPU_PROVIDER, CPU_PROVIDER],
        description="execution providers in order of preference; unavailable ones are skipped")
    require_gpu: bool = Field(False, description="fail to load instead of falling back to the CPU")
    intra_op_threads: int = Field(0, ge=0, description="ORT threads per operator (0: ORT's default)")
    inter_op_threads: int = Field(0, ge=0, description="ORT threads across operators (0: default)")
    spin: bool = Field(
        False, description="let ORT's threads spin between runs: a little lower latency on a "
                           "dedicated machine, CPU burnt for nothing on a shared one")

    # Dynamic batching, per model.
    max_batch_size: int = Field(32, ge=1, description="images per ONNX Runtime run; 1 turns batching off")
    max_delay_ms: float = Field(2.0, ge=0, le=1000, description="how long a batch waits to fill up")
    max_queue: int = Field(1024, ge=1, description="waiting requests per model before 503")
    request_timeout_s: float = Field(30.0, gt=0, description="a request that waits longer gets 504")

    # Input limits.
    max_body_bytes: int = Field(16 * 2**20, gt=0, description="larger request bodies get 413")
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="larger decoded images get 413")
    max_images: int = Field(64, ge=1, description="images or instances in one request")
    max_request_pixels: int = Field(
        256 * 2**20, gt=0, description="decoded pixels one request may cost in all (JPEGs count at "
                                       "the reduced scale they decode at); more gets 413")
    max_concurrent_decodes: int = Field(
        4, ge=1, description="requests decoding large images at once, service-wide: with images "
                             "decoded one at a time, this bounds the memory decoding takes")

    # Connections (serving.httpserver): slow or idle clients are closed, open ones are capped.
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection must finish a request's headers within this; an idle "
                                "new connection is closed after it too")
    body_timeout_s: float = Field(60.0, gt=0, description="a request body must arrive within this")
    keepalive_timeout_s: float = Field(5.0, gt=0, description="idle time between requests on one connection")
    max_connections: int = Field(
        1024, ge=1, description="open connections; at the cap, a new one closes the oldest idle one "
                                "(lowered to fit the process's open-file limit)")
    drain_bytes: int = Field(
        64 * 2**20, ge=0, description="after refusing a body (413), read and discard up to this much "
                                      "of it so that clients which send before reading get the answer")

    # The Open Inference Protocol over gRPC, beside HTTP in the same process (off when unset).
    grpc_port: int | None = Field(None, ge=1, le=65535, description="port for gRPC; unset: no gRPC")
    grpc_host: str = Field("127.0.0.1", description="address gRPC binds (`waldo serve` uses --host)")

    # Auth: a bearer token on predict and on admin endpoints. Unset: open.
    api_key: SecretStr | None = Field(None, description="bearer token for predict and reload")
    admin_key: SecretStr | None = Field(None, description="bearer token for reload (default: api_key)")

    _split_models = field_validator("models", "providers", mode="before")(_split)

    @field_validator("api_key", "admin_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        # `WALDO_API_KEY=` (compose passes unset variables as empty) means no key, not "".
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _gpu_needs_cuda(self):
        if self.require_gpu and GPU_PROVIDER not in self.providers:
            raise ValueError(f"require_gpu is set but providers {self.providers} lack {GPU_PROVIDER}")
        if not self.models:
            raise ValueError("models: at least one model source is needed")
        return self


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
