"""An ONNX model scored on labelled batches through ONNX Runtime, the runtime that serves it:
the task's metrics as training defines them, the confusion matrix, and the latency of one image.

Classification: `acc` (top-1), `top5_acc` (top-5, or top-K with fewer classes) and
`class_acc/<label>` (the share of each class's images predicted as that class).
Localization: `obj_acc` (object present or not, at p_c 0.5), and over the images that hold an
object `cls_acc` and `iou` (box IoU). Both: `latency_ms`, the median time of one image through
the session. The export's precision check (training.export.precision) reads the same figures.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from training.errors import WaldoError

LATENCY_IMAGES = 32  # single-image runs timed, after LATENCY_WARMUP untimed ones
LATENCY_WARMUP = 3
# The figure each task is judged by (thresholds, deltas): its own accuracy.
HEADLINE = {"classify": "acc", "localize": "obj_acc"}


@dataclass
class Scores:
    """What one model scored: metrics by name, and the confusion matrix (rows: true class,
    columns: predicted; localization: over the images that hold an object)."""

    metrics: dict[str, float]
    confusion: list[list[int]] = field(default_factory=list)
    images: int = 0


def metric_key(text: str) -> str:
    """`text` (a label) as part of an MLflow metric name, which takes letters, digits and
    _ - . / : and spaces."""
    return re.sub(r"[^\w\-./: ]", "_", text)


def score(session, batches: Iterable[tuple[np.ndarray, torch.Tensor]], task: str,
          labels: Sequence[str] = (), *, latency: bool = False) -> Scores:
    """Score `session` (an onnxruntime InferenceSession) on (normalized float32 images
    (B, C, H, W), targets) batches; with `latency`, also time single images (`latency_ms`)."""
    from training.tasks.localization import xywh_iou

    input_name = session.get_inputs()[0].name
    fetch = [session.get_outputs()[0].name]  # the prediction alone, as the service asks
    k = len(labels)
    confusion = torch.zeros(k, k, dtype=torch.long) if k else None
    n = correct = top5 = objects = obj_correct = cls_correct = 0
    iou_sum = 0.0
    singles: list[np.ndarray] = []
    for x, target in batches:
        if latency and len(singles) < LATENCY_IMAGES + LATENCY_WARMUP:
            singles.extend(x[i:i + 1] for i in range(min(len(x), LATENCY_IMAGES + LATENCY_WARMUP)))
        out = torch.from_numpy(session.run(fetch, {input_name: x})[0]).float()
        n += len(x)
        if task == "classify":
            predicted = out.argmax(1)
            correct += int((predicted == target).sum())
            best = out.topk(min(5, out.shape[1]), dim=1).indices
            top5 += int((best == target[:, None]).any(1).sum())
            truth = target
        else:
            present = target[:, 0] > 0.5
            obj_correct += int(((out[:, 0] > 0.5) == present).sum())
            if not present.any():
                continue
            objects += int(present.sum())
            predicted = out[present, 5:].argmax(1)
            truth = target[present, 5:].argmax(1)
            cls_correct += int((predicted == truth).sum())
            iou_sum += float(xywh_iou(out[present, 1:5], target[present, 1:5].float()).sum())
        if confusion is not None:
            confusion += torch.bincount(truth.long() * k + predicted, minlength=k * k).reshape(k, k)
    if n == 0:
        raise WaldoError("the data split to score on is empty")
    if task == "classify":
        metrics = {"acc": correct / n, "top5_acc": top5 / n}
    else:
        metrics = {"obj_acc": obj_correct / n}
        if objects:
            metrics.update(cls_acc=cls_correct / objects, iou=iou_sum / objects)
    matrix = confusion.tolist() if confusion is not None else []
    for i, (label, row) in enumerate(zip(labels, matrix, strict=False)):
        if sum(row):
            metrics[f"class_acc/{metric_key(label)}"] = row[i] / sum(row)
    if latency and singles:
        metrics["latency_ms"] = latency_ms(session, input_name, singles, fetch)
    return Scores(metrics, matrix, n)


def latency_ms(session, input_name: str, singles: Sequence[np.ndarray],
               fetch: list[str] | None = None) -> float:
    """The median time of one image through the session asking for `fetch` (None: every
    output), in ms (the first runs untimed)."""
    for x in singles[:LATENCY_WARMUP]:
        session.run(fetch, {input_name: x})
    times = []
    for x in singles[LATENCY_WARMUP:] or singles:
        start = time.perf_counter()
        session.run(fetch, {input_name: x})
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


__all__ = ["HEADLINE", "Scores", "metric_key", "score"]
