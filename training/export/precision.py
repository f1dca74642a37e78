"""fp16 and int8 copies of an exported model, scored against fp32 on the validation split.

Reduced precision changes the numbers on purpose, so the parity check
(`training.export.parity`) does not apply; instead both files are scored with the training
task's own metrics on the validation split, and the reduced one is refused when it loses more
than `max_drop`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from training.errors import WaldoError, unknown_choice
from training.export.exporters import INPUT_NAME, quiet_loggers
from training.export.parity import ort_session
from training.export.source import CheckpointRecord
from training.spec import DEFAULT_MAX_DROP, EXPORT_PRECISIONS, TrainSpec, build_spec

CALIBRATION_IMAGES = 512  # training images that set int8 activation ranges
VALIDATION_METRICS = ("acc", "obj_acc", "cls_acc", "iou")  # what fp16/int8 are held to


def reduce_precision(model: onnx.ModelProto, precision: str,
                     calibration: Iterable[np.ndarray] = ()) -> onnx.ModelProto:
    """An fp16 or int8 copy of an fp32 model; inputs and outputs stay float32.

    int8 is ONNX Runtime's static quantization in QDQ form: uint8 activations whose ranges
    come from `calibration` batches (MinMax), int8 per-channel weights, after ORT's
    pre-processing. Weights keep to 7 bits (`reduce_range`): x86 CPUs without VNNI multiply
    uint8 by int8 with VPMADDUBSW, whose int16 sums saturate at full range. Measured on such a
    CPU (AVX2): logits of the digits cnn off by up to 4.5 at 8 bits, 0.29 at 7.
    """
    if precision == "fp32":
        return model
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        return convert_float_to_float16(model, keep_io_types=True)
    if precision != "int8":
        raise unknown_choice("precision", precision, EXPORT_PRECISIONS)
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {INPUT_NAME: x}

    with tempfile.TemporaryDirectory() as tmp, quiet_loggers("root"):
        src, ready, out = (Path(tmp) / n for n in ("fp32.onnx", "ready.onnx", "int8.onnx"))
        onnx.save(model, src)
        quant_pre_process(str(src), str(ready))  # shape inference + graph optimizations
        quantize_static(str(ready), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, reduce_range=True)
        return onnx.load(out)


def evaluate(session, batches: Iterable[tuple[np.ndarray, torch.Tensor]],
             task: str) -> dict[str, float]:
    """Validation metrics of an ONNX model, defined as the tasks define them in training
    (training.promotion.scores): classify -> val_acc; localize -> val_obj_acc, val_cls_acc,
    val_iou (objects only)."""
    from training.promotion.scores import score

    metrics = score(session, batches, task).metrics
    return {f"val_{k}": v for k, v in metrics.items() if k in VALIDATION_METRICS}


def batches(dm, split: str, limit: int | None = None) -> Iterator[tuple[np.ndarray, Any]]:
    """(normalized float32 images (B, C, H, W), targets) through the training batch transform.
    With `limit`, a fixed random sample of that many items (folders can be sorted by class)."""
    from torch.utils.data import DataLoader, Subset

    dataset = getattr(dm, f"{split}_set")
    if limit is not None and len(dataset) > limit:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
        dataset = Subset(dataset, order[:limit].tolist())
    for batch in DataLoader(dataset, batch_size=64, shuffle=False):
        x, target = dm.on_after_batch_transfer(batch, 0)
        yield x.float().numpy(), target


def compare_precision(model: onnx.ModelProto, precision: str, dm, task: str,
                      max_drop: float = DEFAULT_MAX_DROP,
                      ) -> tuple[onnx.ModelProto, dict[str, float], dict[str, float]]:
    """Make the reduced-precision model and score it and the fp32 one on the validation split.

    Returns (reduced model, fp32 metrics, reduced metrics); raises when any metric drops by
    more than `max_drop`.
    """
    reduced = reduce_precision(model, precision, (x for x, _ in batches(
        dm, "train", CALIBRATION_IMAGES)))
    reference = evaluate(ort_session(model), batches(dm, "val"), task)
    scores = evaluate(ort_session(reduced), batches(dm, "val"), task)
    key, drop = max(((k, reference[k] - scores.get(k, 0.0)) for k in reference),
                    key=lambda item: item[1])
    if drop > max_drop:
        raise WaldoError(
            f"{precision} loses {100 * drop:.2f} points of {key} on the validation split "
            f"({reference[key]:.4f} in fp32, {scores.get(key, 0.0):.4f} in {precision}), more "
            f"than the {100 * max_drop:g} allowed (--max-drop); nothing was written or registered")
    return reduced, reference, scores


def spec_from_record(record: CheckpointRecord, path: str | Path) -> TrainSpec:
    """The data a bare checkpoint was trained on, from the data module's saved state, with the
    data set's default options (the checkpoint does not keep them; its run's spec.yaml does)."""
    data = record.data
    if not data or not data.get("name"):
        raise WaldoError(f"checkpoint {str(path)!r} does not say which data it was trained on; "
                         "export its run with --run to compare precisions")
    return build_spec(TrainSpec, None, {"task": record.task, "data": data["name"],
                                        "image_size": data["image_size"]})


def validation_data(spec: TrainSpec, record: CheckpointRecord):
    """The spec's data module, set up, after checking that it matches the network."""
    h = record.hparams
    return scoring_data(spec, h.get("labels") or [], h["image_size"])


def scoring_data(spec: TrainSpec, labels: Sequence[str], image_size: int):
    """The spec's data module, set up (every split), after checking that its labels and image
    size are the network's: scores on other data would compare nothing."""
    from training.data import create_datamodule

    dm = create_datamodule(spec.data_spec())
    dm.setup("fit")
    if list(dm.labels) != list(labels) or dm.image_size != image_size:
        raise WaldoError(f"data {spec.data!r} ({len(dm.labels)} classes, {dm.image_size} px) "
                         f"does not match the network ({len(labels)} classes, "
                         f"{image_size} px); cannot score {spec.data!r} on it")
    return dm
