"""The model a scoring run uses: `models:/NAME@ALIAS`, `models:/NAME/VERSION` (fetched from the
MLflow registry by `serving.repository.fetch`, as the service fetches it) or a version folder
written by `waldo export` (`models/cnn/3`; a model folder such as `models/cnn` means its newest
version), opened in an ONNX Runtime session.

The session runs only the graph's first output, the one its ModelCard describes and the service
asks for (`serving.runtime.LoadedModel`): an export may carry more outputs (activations for
explanations) that scoring never computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serving.modelcard import CARD_FILE, MODEL_FILE, ModelCard
from serving.repository import RepositoryError, fetch, holds, load_card, scan
from training.errors import WaldoError, one_line

GPU_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
ACCEPTED = ("models:/NAME@ALIAS, models:/NAME/VERSION, or a version folder written by `waldo export` "
            "(holding model.onnx and modelcard.json)")


@dataclass(frozen=True)
class Model:
    """A model version on this machine: what it is and where its ONNX file lies."""

    name: str
    version: str
    uri: str  # as the user gave it
    card: ModelCard
    path: Path  # model.onnx


def open_model(uri: str, cache: str | Path, tracking_uri: str | None = None) -> Model:
    """The model `uri` names, downloaded into `cache` when it is a registry URI; one line
    (WaldoError) when it names nothing usable."""
    if uri.startswith("models:/"):
        try:
            version = fetch(uri, cache, tracking_uri)
            card = version.card()
        except RepositoryError as exc:
            raise WaldoError(f"model {uri!r}: {exc}") from None
        return Model(version.name, version.version, uri, card, version.model_path)
    folder = Path(uri).expanduser()
    if not (folder / MODEL_FILE).is_file() and folder.is_dir() and holds(folder.parent, folder.name):
        folder = scan(folder.parent)[folder.name].path  # a model folder: its newest version
    if not (folder / MODEL_FILE).is_file() or not (folder / CARD_FILE).is_file():
        where = "does not exist" if not folder.exists() else f"holds no {MODEL_FILE} and {CARD_FILE}"
        raise WaldoError(f"model {uri!r} {where}; give {ACCEPTED}")
    try:
        card = load_card(folder / CARD_FILE)
    except RepositoryError as exc:
        raise WaldoError(f"model {uri!r}: {exc}") from None
    version = folder.name if folder.name.isdigit() else card.version
    return Model(card.name, version, uri, card, folder / MODEL_FILE)


def providers(gpu: bool) -> list[str]:
    """The providers to ask for: CUDA first when wanted and this onnxruntime has it."""
    import onnxruntime as ort

    present = ort.get_available_providers()
    return [GPU_PROVIDER, CPU_PROVIDER] if gpu and GPU_PROVIDER in present else [CPU_PROVIDER]


def open_session(model: bytes | str | Path, threads: int, *, gpu: bool = False):
    """An ONNX Runtime session on `threads` intra-op threads that do not spin while idle (the
    decoding threads share the cores), on the GPU when asked and available."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, options, providers=providers(gpu))
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise WaldoError(f"the model does not load in ONNX Runtime: {one_line(exc)}") from None


class Runner:
    """A session and the names of the one input and the one output scoring uses."""

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name  # the card's output, as the service runs it

    def __call__(self, batch):
        import numpy as np

        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return np.asarray(out, dtype=np.float32)


__all__ = ["ACCEPTED", "Model", "Runner", "open_model", "open_session", "providers"]
