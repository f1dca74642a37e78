"""One model version loaded into an ONNX Runtime session and proven to run.

A version is only handed to the service after a smoke inference at batch size 2 gave outputs of
the shape its ModelCard promises, with finite values: a broken file never replaces a working one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from serving.modelcard import ModelCard
from serving.repository import ModelVersion, RepositoryError
from serving.settings import GPU_PROVIDER, Settings

log = logging.getLogger("waldo.serving")


class LoadError(Exception):
    """A model version that could not be loaded or failed its smoke test."""


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


@dataclass
class LoadedModel:
    name: str
    version: str
    card: ModelCard
    session: object  # onnxruntime.InferenceSession (imported lazily)
    providers: list[str]  # what the session really uses, not what was asked for
    source: str
    input_name: str = field(init=False)
    output_name: str = field(init=False)

    def __post_init__(self):
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 -> (B, ...) float32. Thread-safe: ORT allows concurrent Run()."""
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return np.asarray(out, dtype=np.float32)

    def run_outputs(self, batch: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The prediction and the extra outputs `names` (the card's `explain` part, v2 requests
        that name them) for one batch, by name."""
        wanted = list(dict.fromkeys((self.output_name, *names)))
        values = self.session.run(wanted, {self.input_name: batch})
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(wanted, values, strict=True)}

    @property
    def extra_outputs(self) -> list[str]:
        """The outputs besides the prediction that the file gives."""
        return [o.name for o in self.session.get_outputs()[1:]]

    def describe(self) -> dict:
        card = self.card
        return {
            "name": self.name, "version": self.version, "task": card.task, "labels": card.labels,
            "input": card.input.model_dump(), "outputs": [o.model_dump() for o in card.outputs],
            "precision": card.precision, "architecture": card.architecture,
            "source_run": card.source_run, "metrics": card.metrics,
            "providers": self.providers, "source": self.source,
        }


def _session_options(settings: Settings):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    if not settings.spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if settings.require_gpu:
        # Without this, a CUDA session that cannot start falls back to the CPU with a log line.
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return options


def load(version: ModelVersion, settings: Settings, source: str) -> LoadedModel:
    """Open `version` with the configured providers and smoke-test it; raise LoadError if not."""
    import onnxruntime as ort

    try:
        card = version.card()
    except RepositoryError as exc:
        raise LoadError(str(exc)) from None
    present = available_providers()
    wanted = [p for p in settings.providers if p in present]
    if settings.require_gpu and GPU_PROVIDER not in wanted:
        raise LoadError(f"require_gpu is set but this onnxruntime has no {GPU_PROVIDER} "
                        f"(it has {', '.join(present)}); install onnxruntime-gpu")
    if not wanted:
        raise LoadError(f"none of the providers {settings.providers} is available; "
                        f"this onnxruntime has {', '.join(present)}")
    try:
        session = ort.InferenceSession(str(version.model_path), sess_options=_session_options(settings),
                                       providers=wanted)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        reason = " ".join(str(exc).split())
        raise LoadError(f"{version.model_path} does not load in ONNX Runtime: {reason}") from None
    in_effect = session.get_providers()
    if settings.require_gpu and GPU_PROVIDER not in in_effect:
        raise LoadError(f"{GPU_PROVIDER} was asked for and is required, but the session runs on "
                        f"{in_effect}: is a GPU visible and CUDA/cuDNN installed?")
    model = LoadedModel(version.name, version.version, card, session, in_effect, source)
    _smoke_test(model)
    if GPU_PROVIDER in wanted and GPU_PROVIDER not in in_effect:  # onnxruntime-gpu without a GPU
        log.warning("%s v%s runs on %s: CUDA did not start", version.name, version.version, in_effect)
    else:
        log.info("%s v%s runs on %s", version.name, version.version, ", ".join(in_effect))
    return model


def _smoke_test(model: LoadedModel) -> None:
    spec = model.card.input
    probe = np.zeros((2, spec.channels, spec.height, spec.width), dtype=np.float32)
    try:
        out = model.run(probe)
    except Exception as exc:
        raise LoadError(f"{model.name} v{model.version} fails a smoke inference on input "
                        f"{probe.shape}: {' '.join(str(exc).split())}") from None
    width = len(model.card.labels) + (5 if model.card.task == "localize" else 0)
    if out.shape != (2, width):
        raise LoadError(f"{model.name} v{model.version}: output shape {out.shape} does not match "
                        f"its card ({model.card.task} with {len(model.card.labels)} labels: (2, {width}))")
    if not np.isfinite(out).all():
        raise LoadError(f"{model.name} v{model.version} gives non-finite outputs on a zero input")
