"""ONNX export and its validation: a trained checkpoint becomes `<output>/<name>/<version>/`
holding `model.onnx` (its ModelCard inside the metadata) and `modelcard.json`.

Export and validation are separate steps over one small utility (timm's split): `to_onnx`
exports, `check_parity` runs ONNX Runtime and torch on the same inputs, `training.precision`
makes fp16 or int8 copies and scores them against fp32 on the validation split, and
`write_version` lays the files out. `export_run` strings them together for `waldo export`, for
`train(spec)` with `export` set, and for a sweep's best trial; `training.publish` registers
the result in MLflow. Nothing is written or registered unless every check passes.

Which exporter: the TorchScript one (`dynamo=False`) first. It writes these networks in
0.02-3 s, against 1-9 s for the dynamo exporter (2 cores), at opsets 18-20 with a dynamic
batch axis (`dynamic_axes`). It cannot express an adaptive average pool whose output size does
not divide its input (AlexNet and VGG on small images stretch a 1x1 map to 6x6 or 7x7) nor
opsets above 20; there the dynamo exporter (torch.export + onnxscript, `dynamic_shapes`) takes
over. Either way the parity check, not the exporter, decides whether the file is right.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from serving.modelcard import CARD_FILE, MODEL_FILE, ONNX_METADATA_KEY, ModelCard
from training.errors import WaldoError, unknown_choice
from training.spec import TrainSpec, build_spec
from training.tasks import BaseTask, load_task_file

PRECISIONS = ("fp32", "fp16", "int8")
EXPORTERS = ("auto", "torchscript", "dynamo")
MIN_OPSET = DEFAULT_OPSET = 18  # dynamo writes 18 and up natively
MAX_OPSET = 23  # the newest opset torch 2.14's exporters write
TORCHSCRIPT_MAX_OPSET = 20
DEFAULT_ATOL = 1e-4
DEFAULT_MAX_DROP = 0.01  # validation accuracy (as a fraction) that fp16/int8 may lose
PARITY_BATCH_SIZES = (1, 3, 8)  # 1, an odd size, and more than the export example's 2
INPUT_NAME = "input"
# A protobuf message cannot exceed 2 GiB; bigger models would need external data.
MAX_SINGLE_FILE_BYTES = 2**31 - 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


# --- export -------------------------------------------------------------------------------
def to_onnx(net: nn.Module, example: torch.Tensor, *, opset: int = DEFAULT_OPSET,
            output_names: Sequence[str] = ("output",), exporter: str = "auto",
            ) -> tuple[onnx.ModelProto, str]:
    """Export `net` (already in eval mode) with a dynamic batch axis.

    Returns the model and the exporter that wrote it ("torchscript" or "dynamo"). `example`
    must have a batch of at least 2: both exporters treat a batch of 1 as a constant.
    """
    errors = []
    if exporter == "auto" and opset <= TORCHSCRIPT_MAX_OPSET and not _pools_divide(net, example):
        errors.append("torchscript exporter: adaptive pooling to a size that does not divide "
                      "its input")  # known in advance: skip the attempt and its log output
    elif exporter in ("auto", "torchscript") and opset <= TORCHSCRIPT_MAX_OPSET:
        try:
            return _torchscript(net, example, opset, list(output_names)), "torchscript"
        except Exception as exc:  # e.g. adaptive_avg_pool2d "output size not a factor"
            errors.append(f"torchscript exporter: {_one_line(exc)}")
    elif exporter == "torchscript":
        errors.append(f"torchscript exporter: writes opsets up to {TORCHSCRIPT_MAX_OPSET}")
    if exporter in ("auto", "dynamo"):
        try:
            return _dynamo(net, example, opset, list(output_names)), "dynamo"
        except Exception as exc:
            errors.append(f"dynamo exporter: {_one_line(exc)}")
    raise WaldoError(f"cannot export {type(net).__name__} to ONNX opset {opset}: "
                     + "; ".join(errors))


def _pools_divide(net: nn.Module, example: torch.Tensor) -> bool:
    """Whether every adaptive pool's output size divides its input size: the TorchScript
    exporter writes only those (as fixed-stride pooling)."""
    ok = True

    def check(module, args, output):
        nonlocal ok
        ok &= all(i % o == 0 for i, o in zip(args[0].shape[2:], output.shape[2:], strict=True))

    pools = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
             nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
    hooks = [m.register_forward_hook(check) for m in net.modules() if isinstance(m, pools)]
    try:
        with torch.inference_mode():
            net(example)
    finally:
        for hook in hooks:
            hook.remove()
    return ok


def _torchscript(net: nn.Module, example: torch.Tensor, opset: int,
                 output_names: list[str]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its own deprecation notice, tracer notes
        torch.onnx.export(
            net, (example,), buffer, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=output_names,
            dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *output_names]},
            training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True,
        )
    return onnx.load_model_from_string(buffer.getvalue())


def _dynamo(net: nn.Module, example: torch.Tensor, opset: int,
            output_names: list[str]) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), quiet_loggers("torch.onnx", "onnxscript", "torch.export"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=output_names, dynamic_shapes=({0: batch},), verbose=False,
        )
    return program.model_proto  # weights inside the proto: one file when saved


@contextlib.contextmanager
def quiet_loggers(*loggers: str) -> Iterator[None]:
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


# --- validation ---------------------------------------------------------------------------
def ort_session(model: onnx.ModelProto | bytes | str | Path, threads: int | None = None):
    """A CPU ONNX Runtime session that leaves the cores to torch between runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # Idle ORT threads spin by default and would starve torch running on the same cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def check_parity(net: nn.Module, session, input_shape: Sequence[int],
                 batch_sizes: Sequence[int] = PARITY_BATCH_SIZES, seed: int = 0) -> float:
    """Largest |onnxruntime - torch| over random inputs (B, C, H, W) for each batch size B.

    Inputs are standard normal, like normalized images. A shape mismatch or a non-finite
    output counts as infinitely far apart.
    """
    generator = torch.Generator().manual_seed(seed)
    input_name = session.get_inputs()[0].name
    worst = 0.0
    for b in batch_sizes:
        x = torch.randn(b, *input_shape, generator=generator)  # (B, C, H, W)
        with torch.inference_mode():
            expected = net(x).float().numpy()
        got = session.run(None, {input_name: x.numpy()})[0]
        if got.shape != expected.shape:
            return float("inf")
        diff = float(np.abs(got.astype(np.float64) - expected).max(initial=0.0))
        worst = max(worst, diff if np.isfinite(diff) else float("inf"))
    return worst


@dataclass
class Exported:
    """An exported network that passed the parity check, in memory."""

    model: onnx.ModelProto
    max_abs_diff: float
    exporter: str
    batch_sizes: tuple[int, ...]
    seconds: float


def export_task(task: BaseTask, *, opset: int = DEFAULT_OPSET, atol: float = DEFAULT_ATOL,
                batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
                exporter: str = "auto") -> Exported:
    """Export the task's network in eval mode and check it against torch.

    Eval mode fixes batch norm and dropout, and drops GoogLeNet's auxiliary heads. Raises a
    WaldoError naming the figure when the outputs differ by more than `atol`.
    """
    start = time.perf_counter()
    h = task.hparams
    net = task.net.eval()
    shape = (h.in_channels, h.image_size, h.image_size)
    example = torch.zeros(2, *shape)  # (B, C, H, W); see to_onnx on the batch of 2
    model, used = to_onnx(net, example, opset=opset, exporter=exporter,
                          output_names=[o.name for o in task.outputs])
    if model.ByteSize() > MAX_SINGLE_FILE_BYTES:
        raise WaldoError(f"{h.model_name} is over 2 GB as ONNX; it would need external data, "
                         "which this export does not write")
    data = model.SerializeToString()  # once: VGG's 0.5 GB take a second
    onnx.checker.check_model(data)
    diff = check_parity(net, ort_session(data), shape, batch_sizes)
    if not diff <= atol:
        hint = " (try --exporter dynamo)" if used == "torchscript" else ""
        raise WaldoError(
            f"parity check failed: max |onnxruntime - torch| = {diff:.3g} at batch sizes "
            f"{', '.join(map(str, batch_sizes))}, above the tolerance {atol:g}; "
            f"nothing was written or registered{hint}")
    return Exported(model, diff, used, tuple(batch_sizes), time.perf_counter() - start)


# --- the repository layout ----------------------------------------------------------------
def embed_card(model: onnx.ModelProto, card: ModelCard) -> None:
    """Put the card into the model's metadata (replacing an older one) and its version into
    the model's `model_version` field."""
    kept = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=ONNX_METADATA_KEY, value=card.model_dump_json())
    model.model_version = int(card.version) if card.version.isdigit() else 0
    model.doc_string = f"{card.name} v{card.version}: {card.architecture} ({card.task})"


def next_version(root: Path) -> int:
    """One more than the highest integer version folder under `root` (1 when none)."""
    numbers = [int(p.name) for p in root.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(numbers, default=0) + 1


def write_version(model: onnx.ModelProto, card: ModelCard, output: str | Path,
                  version: int | None = None) -> tuple[Path, ModelCard]:
    """Write `<output>/<card.name>/<version>/{model.onnx, modelcard.json}` and return the
    folder and the card as written.

    The files are written to a hidden folder and renamed into place, so a reader never sees
    half a version and an existing version is never replaced. Without `version`, the next
    free number is taken.
    """
    root = Path(output) / card.name
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(5):  # another export may take the number between the scan and the rename
        number = version if version is not None else next_version(root)
        versioned = card.model_copy(update={"version": str(number)})
        embed_card(model, versioned)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
        try:
            (tmp / MODEL_FILE).write_bytes(model.SerializeToString())
            (tmp / CARD_FILE).write_text(versioned.model_dump_json(indent=2) + "\n")
            os.rename(tmp, root / str(number))
            return root / str(number), versioned
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (root / str(number)).is_dir():
                raise
            if version is not None:
                raise WaldoError(f"{root / str(number)} already exists (from an export without "
                                 "--register?); choose another --output or --name") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    raise WaldoError(f"could not claim a new version folder under {root}; try again")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise WaldoError(f"invalid model name {name!r}: use letters, digits, '_', '-' and '.', "
                         "starting with a letter or digit (at most 100 characters)")
    return name


# --- the whole pipeline -------------------------------------------------------------------
@dataclass
class ExportResult:
    """What `export_run` wrote (and registered)."""

    name: str
    version: int
    path: Path  # the version folder
    card: ModelCard
    checkpoint: Path
    max_abs_diff: float
    exporter: str
    seconds: float
    reference: dict[str, float] = field(default_factory=dict)  # fp32 on the validation split
    data: str | None = None  # the data set fp16/int8 were scored on
    model_uri: str | None = None  # models:/<name>/<version> when registered
    alias: str | None = None

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def summary(self) -> list[str]:
        c = self.card
        size = self.model_path.stat().st_size if self.model_path.exists() else 0
        size_text = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
        lines = [
            f"exported {self.name} version {self.version}: {self.model_path} ({size_text}, "
            f"{c.precision}, opset {c.opset}, {self.exporter} exporter, {self.seconds:.1f} s)",
            f"parity: max |onnxruntime - torch| = {self.max_abs_diff:.2g} (fp32)",
        ]
        for key, ref in self.reference.items():
            got = c.metrics.get(key, float("nan"))
            lines.append(f"{c.precision} on the {self.data} validation split: {key} {got:.4f} "
                         f"(fp32 {ref:.4f}, {100 * (got - ref):+.2f} points)")
        if self.model_uri:
            moved = f", alias {self.alias!r} -> version {self.version}" if self.alias else ""
            lines.append(f"registered {self.model_uri}{moved}")
        return lines


def default_name(task: BaseTask) -> str:
    arch = task.hparams.model_name
    return arch if task.task == "classify" else f"{arch}-{task.task}"


def export_run(
    run_id: str | None = None,
    *,
    checkpoint: str | Path | None = None,
    spec: TrainSpec | None = None,
    name: str | None = None,
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    output: str | Path = "models",
    register: bool = False,
    alias: str | None = None,
    tracking_uri: str | None = None,
    atol: float = DEFAULT_ATOL,
    max_drop: float = DEFAULT_MAX_DROP,
    exporter: str = "auto",
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
) -> ExportResult:
    """Export a run's best checkpoint (or a checkpoint file), check it, write it into the
    repository at `output`, and with `register` (implied by `alias`) register it in MLflow.

    `run_id` links the export to its MLflow run: its test metrics go into the card, and the
    registered version points back to it. Given with `checkpoint`, the file is used instead of
    looking the run's checkpoint up. `spec` (else the run's spec.yaml, else the checkpoint)
    says which data to score fp16/int8 on.
    """
    from training.publish import check_alias, publish
    from training.tracking import resolve_tracking_uri

    start = time.perf_counter()
    if run_id is None and checkpoint is None:
        raise WaldoError("nothing to export: give a run id (--run) or a checkpoint (--checkpoint)")
    if precision not in PRECISIONS:
        raise unknown_choice("precision", precision, PRECISIONS)
    if exporter not in EXPORTERS:
        raise unknown_choice("exporter", exporter, EXPORTERS)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise WaldoError(f"opset {opset} is not supported: use {MIN_OPSET} to {MAX_OPSET}")
    if not atol >= 0 or not max_drop >= 0:
        raise WaldoError(f"tolerances must be non-negative (atol={atol}, max_drop={max_drop})")
    if name is not None:
        check_name(name)
    if alias is not None:
        check_alias(alias)
        register = True
    uri = resolve_tracking_uri(tracking_uri)

    with tempfile.TemporaryDirectory() as downloads:
        source = _RunSource(run_id, uri) if run_id else None
        if spec is None and source is not None:
            spec = source.spec(Path(downloads))
        path = Path(checkpoint) if checkpoint else source.checkpoint(spec, Path(downloads))
        task = load_task_file(path)
        name = check_name(name or default_name(task))
        meta = _checkpoint_meta(path)

        exported = export_task(task, opset=opset, atol=atol, batch_sizes=batch_sizes,
                               exporter=exporter)
        model, reference, metrics = exported.model, {}, {}
        if source is not None:
            metrics.update(source.test_metrics())
        if meta.get("monitor") and meta.get("best_score") is not None:
            metrics[meta["monitor"]] = meta["best_score"]  # of the exported (best) epoch
        metrics["onnx_max_abs_diff"] = exported.max_abs_diff
        if precision != "fp32":
            from training.precision import compare_precision, spec_from_checkpoint, validation_data

            spec = spec or spec_from_checkpoint(meta, task.task, path)
            dm = validation_data(spec, task)
            model, reference, scores = compare_precision(model, precision, dm, task.task,
                                                         max_drop)
            metrics.update(scores)
            metrics.update({f"{k}_fp32": v for k, v in reference.items()})

    card = task.model_card(name=name, source_run=run_id, metrics=metrics, opset=opset,
                           precision=precision)
    result = ExportResult(name, 0, Path(), card, path, exported.max_abs_diff,
                          exported.exporter, 0.0, reference, spec.data if reference else None)
    if register:
        def write(version: int) -> Path:
            result.path, result.card = write_version(model, card, output, version)
            return result.path

        published = publish(uri, name=name, run_id=run_id, write=write, alias=alias,
                            tags={"waldo.precision": precision, "waldo.task": task.task,
                                  "waldo.architecture": task.hparams.model_name},
                            description=f"{task.hparams.model_name} ({task.task}), {precision}, "
                                        f"opset {opset}" + (f", run {run_id}" if run_id else ""))
        result.version, result.alias = published, alias
        result.model_uri = f"models:/{name}/{published}"
    else:
        result.path, result.card = write_version(model, card, output)
        result.version = int(result.card.version)
    result.seconds = time.perf_counter() - start
    return result


class _RunSource:
    """An MLflow run to export: its checkpoint, spec and test metrics."""

    def __init__(self, run_id: str, uri: str):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.run_id, self.uri = run_id, uri
        self.client = MlflowClient(uri)
        try:
            self.run = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise WaldoError(f"unknown run {run_id!r}: no such run in the MLflow store at "
                                 f"{uri} (see --tracking-uri)") from None
            raise WaldoError(f"cannot read run {run_id!r} from MLflow at {uri}: "
                             f"{_one_line(exc)}") from None
        except Exception as exc:  # unreachable server, bad URI
            raise WaldoError(f"cannot reach MLflow tracking at {uri!r}: {_one_line(exc)}") from None

    def _files(self, path: str | None = None, depth: int = 2) -> list[str]:
        out = []
        for info in self.client.list_artifacts(self.run_id, path):
            if info.is_dir and depth > 1:
                out += self._files(info.path, depth - 1)
            elif not info.is_dir:
                out.append(info.path)
        return out

    def spec(self, downloads: Path) -> TrainSpec | None:
        if "spec.yaml" not in self._files(depth=1):
            return None
        local = self.client.download_artifacts(self.run_id, "spec.yaml", str(downloads))
        try:
            return build_spec(TrainSpec, local)
        except WaldoError:  # written by another version of Waldo; the checkpoint still says
            return None

    def checkpoint(self, spec: TrainSpec | None, downloads: Path) -> Path:
        """The run's best checkpoint: the local file `train` wrote when it is here, else the
        artifact (best/best.ckpt; another .ckpt only if there is no best)."""
        if spec is not None:
            local = Path(spec.storage or "waldo_runs") / self.run_id / "checkpoints" / "best.ckpt"
            if local.is_file():
                return local
        found = sorted(p for p in self._files() if p.endswith(".ckpt"))
        # best/best.ckpt (in-process runs), best/checkpoint.ckpt (Ray), then any other
        best = sorted(found, key=lambda p: (Path(p).name != "best.ckpt",
                                            not p.startswith("best/")))
        if not best:
            raise WaldoError(f"run {self.run_id} has no checkpoint to export (no .ckpt among "
                             "its artifacts; `waldo train` logs best/best.ckpt when it finishes)")
        return Path(self.client.download_artifacts(self.run_id, best[0], str(downloads)))

    def test_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.run.data.metrics.items() if k.startswith("test_")}


def _checkpoint_meta(path: Path) -> dict[str, Any]:
    """The monitored metric and its best value, and the data module's state, from a
    checkpoint (memory-mapped: only these small entries are read)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    meta: dict[str, Any] = {}
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and state.get("best_model_score") is not None:
            meta["monitor"] = state.get("monitor")
            meta["best_score"] = float(state["best_model_score"])
    for value in checkpoint.values():
        if isinstance(value, dict) and {"name", "labels", "image_size"} <= set(value):
            meta["data"] = value  # ImageDataModule.state_dict()
    return meta
