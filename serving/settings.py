"""Service settings: pydantic-settings, environment prefix `WALDO_`, one cached instance.

Every field is also an environment variable, `WALDO_<FIELD>` (e.g. `WALDO_MAX_BATCH_SIZE=16`).
Tests and `waldo serve` build a `Settings` themselves and hand it to `create_app`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

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
        10.0, ge=0, description="check sources for a new version, and the registry for the alias's "
                                "rollout policy, this often (0: only on reload or v2 load)")

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
    max_json_values: int = Field(
        2**20, ge=1, description="values (numbers, strings, lists, objects) one JSON body may hold, "
                                 "counted from its commas, colons and brackets before it is parsed; "
                                 "more gets 413. Parsed JSON costs up to ~100 bytes of memory a "
                                 "value, so this bounds a JSON body's memory where the byte limit "
                                 "cannot (tensors this large travel as binary data or images)")
    max_concurrent_json: int = Field(
        1, ge=1, description="requests parsing a JSON body over 1 MiB at once, service-wide (the "
                             "rest wait their turn; 503 after request_timeout_s): parsed JSON costs "
                             "up to ~10 times its size, so this bounds what large JSON bodies take "
                             "together")
    explain_passes: int = Field(
        50, ge=2, le=1024, description="forward passes one explanation may cost where the model "
        "has no CAM (occlusion: the image, then once per occluded place); each counts as an image")
    max_response_bytes: int = Field(
        16 * 2**20, gt=0, description="the largest answer one request may make the service build, "
                                      "reckoned before any work from its rows, outputs and their "
                                      "widths (classification strings at their longest); more gets "
                                      "413 over HTTP, RESOURCE_EXHAUSTED over gRPC")

    # Connections (httpapi.server): slow or idle clients are closed, open ones are capped.
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection must finish a request's headers within this; an idle "
                                "new connection is closed after it too")
    body_timeout_s: float = Field(60.0, gt=0, description="a request body must arrive within this")
    keepalive_timeout_s: float = Field(5.0, gt=0, description="idle time between requests on one connection")
    max_connections: int = Field(
        1024, ge=2, description="open connections of HTTP and gRPC together (one budget, lowered to fit "
                                "the process's open-file limit); at HTTP's cap, a new connection closes "
                                "the oldest idle one")
    grpc_max_connections: int = Field(
        128, ge=1, description="gRPC's part of max_connections (lowered with it); past it, a new gRPC "
                               "connection is closed at once. A gRPC client multiplexes its calls "
                               "over one connection")
    grpc_idle_timeout_s: float = Field(
        60.0, gt=0, description="a gRPC connection with no call in flight for this long is closed "
                                 "(GOAWAY); clients reconnect on their next call")
    drain_bytes: int = Field(
        64 * 2**20, ge=0, description="after refusing a body (413), read and discard up to this much "
                                      "of it so that clients which send before reading get the answer")

    # The Open Inference Protocol over gRPC, beside HTTP in the same process (off when unset).
    grpc_port: int | None = Field(None, ge=1, le=65535, description="port for gRPC; unset: no gRPC")
    grpc_host: str = Field("127.0.0.1", description="address gRPC binds (`waldo serve` uses --host)")

    # Auth (README: Security). Without keys, inference and information are open and repository
    # control (load, unload, reload) is off.
    api_key: SecretStr | None = Field(
        None, description="bearer token for inference (and for information with protect_info)")
    admin_key: SecretStr | None = Field(
        None, description="bearer token for repository control (load, unload, reload): setting it "
                          "turns repository control on; callers presenting it also see server paths")
    model_control: Literal["none", "explicit"] | None = Field(
        None, description="repository control (Triton's --model-control-mode): 'explicit' on, 'none' "
                          "off; unset: on exactly when admin_key is set. On, it needs admin_key, else "
                          "api_key, else nothing")
    protect_info: bool = Field(
        False, description="put /metrics, /v1/models, /docs, /openapi.json, /redoc and the v2 "
                           "metadata, config, statistics and repository index (HTTP and gRPC) behind "
                           "api_key (admin_key passes too); liveness and readiness stay open")

    _split_models = field_validator("models", "providers", mode="before")(_split)

    @field_validator("api_key", "admin_key", "model_control", mode="before")
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

    @model_validator(mode="after")
    def _keys_and_connections(self):
        if self.protect_info and self.api_key is None and self.admin_key is None:
            raise ValueError("protect_info is set but there is no key to ask for: set api_key "
                             "(WALDO_API_KEY) or admin_key (WALDO_ADMIN_KEY)")
        if self.grpc_port is not None and self.grpc_max_connections >= self.max_connections:
            raise ValueError(f"grpc_max_connections ({self.grpc_max_connections}) must be below "
                             f"max_connections ({self.max_connections}), which HTTP shares")
        return self

    @property
    def repository_control(self) -> bool:
        """Whether load, unload and reload are served (`model_control`, else `admin_key`)."""
        if self.model_control is None:
            return self.admin_key is not None
        return self.model_control == "explicit"

    @property
    def control_key(self) -> SecretStr | None:
        """The bearer token that repository control asks for, when it is on."""
        return self.admin_key or self.api_key


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
