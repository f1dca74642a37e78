"""A model repository of two tiny ONNX models, built with `onnx.helper` in a fraction of a
second, for the serving tests whose point is the service (protocols, limits, access, reloads)
rather than what a trained network predicts.

Both models see one thing in an image: its mean brightness m, the mean of its pixels scaled to
[0, 1] (their cards ask for scale 1/255, mean 0 and std 1). Class k scores -2 (k - 9 m)^2 (the
network computes 36 k m - 2 k^2, which differs by a constant per image), so the predicted class
is the nearest of 0..9 to 9 m: a uniform grey of level 255 k / 9 is class k. The localizer
returns [p_c, x, y, w, h, p_0..p_9] with p_c = sigmoid(40 m - 2), the fixed box `BOX` (fractions
of the image) and the softmax of the same scores.

`expected_probabilities`, `expected_class` and `expected_p_c` recompute those answers in numpy
from the pixels a model sees (already at its input size), without serving's code, so a test can
check what the service answers. The models are written as `waldo export` writes them
(`training.export.layout.write_version`: the card in the ONNX metadata and beside it), under
the names of the session's trained models, `cnn` and `cnn-localize`, so that a test reads the
same against either repository.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from serving.modelcard import InputSpec, ModelCard
from training.export.card import card_outputs, output_names
from training.export.layout import write_version

CLASSIFIER, LOCALIZER = "cnn", "cnn-localize"
SIZES = {CLASSIFIER: 28, LOCALIZER: 32}  # the models' square input sizes
TASKS = {CLASSIFIER: "classify", LOCALIZER: "localize"}
CLASSES = 10
LABELS = [str(k) for k in range(CLASSES)]
BOX = (0.25, 0.25, 0.5, 0.5)  # the localizer's box: x, y (top-left corner), w, h
OPSET, IR_VERSION = 17, 8  # an IR version every onnxruntime of the last years reads


@dataclass(frozen=True)
class TinyModel:
    """One version written into the repository: its folder (model.onnx, modelcard.json)."""

    name: str
    task: str
    size: int
    folder: Path
    card: ModelCard


# --- the answers, recomputed ------------------------------------------------------------------
def brightness(pixels: np.ndarray) -> float:
    """The mean of uint8 pixels scaled to [0, 1]: all that the tiny models see."""
    return float(np.asarray(pixels, dtype=np.float64).mean() / 255)


def expected_probabilities(pixels: np.ndarray) -> np.ndarray:
    """The class probabilities either model gives for `pixels` (uint8, at its input size)."""
    scores = -2 * (np.arange(CLASSES) - 9 * brightness(pixels)) ** 2
    e = np.exp(scores - scores.max())
    return e / e.sum()


def expected_class(pixels: np.ndarray, shift: int = 0) -> int:
    """The class a model predicts (`classifier(shift)`: the nearest of 0..9 to 9 m + shift)."""
    scores = -2 * (np.arange(CLASSES) - shift - 9 * brightness(pixels)) ** 2
    return int(np.argmax(scores))


def expected_p_c(pixels: np.ndarray) -> float:
    """The localizer's object probability for `pixels` (uint8, 32x32)."""
    return float(1 / (1 + np.exp(-(40 * brightness(pixels) - 2))))


# --- the networks -------------------------------------------------------------------------------
def _linear(size: int, per_mean: list[float], bias: list[float], output: str = "z") -> list:
    """Nodes and weights of `input` (N, 1, size, size) -> the mean of each image, m (N, 1) ->
    Gemm -> `output` (N, len(bias)), where output[:, j] = per_mean[j] * m + bias[j]. (Averaging first
    keeps float32's rounding small: a Gemm over all the pixels would be the same map, but
    rounds its sums of hundreds of terms to about 1e-4.)"""
    return [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("ReduceMean", ["flat"], ["m"], axes=[1], keepdims=1),
            helper.make_node("Gemm", ["m", "W", "b"], [output]),
            numpy_helper.from_array(np.asarray([per_mean], np.float32), "W"),
            numpy_helper.from_array(np.asarray(bias, np.float32), "b")]


def _model(name: str, size: int, nodes: list, width: int, output: str) -> onnx.ModelProto:
    graph_nodes = [n for n in nodes if isinstance(n, onnx.NodeProto)]
    weights = [n for n in nodes if isinstance(n, onnx.TensorProto)]
    graph = helper.make_graph(
        graph_nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", width])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="waldo-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def classifier(shift: int = 0) -> onnx.ModelProto:
    """(N, 1, 28, 28) -> the logits 36 k m - 2 k^2 of k = 0..9. With `shift`, the scores of
    class k are those of k - shift: a classifier that disagrees (`expected_class(..., shift)`)."""
    k = np.arange(CLASSES) - shift
    (logits,) = output_names("classify")
    nodes = _linear(SIZES[CLASSIFIER], list(36.0 * k), list(-2.0 * k**2), logits)
    return _model(CLASSIFIER, SIZES[CLASSIFIER], nodes, CLASSES, logits)


def faulty_classifier(fault: str) -> onnx.ModelProto:
    """The classifier, broken for any image that is not all black, so that it passes the
    service's smoke test (a zero input) and fails on real requests: `fault="nan"` adds
    sqrt(-m) to every logit (NaN where m > 0); `fault="error"` gathers the logits at column
    indices shifted by 100 * ceil(max m), out of range, which ONNX Runtime refuses with an error."""
    k = np.arange(CLASSES)
    (logits,) = output_names("classify")
    nodes = _linear(SIZES[CLASSIFIER], list(36.0 * k), list(-2.0 * k**2), "z")
    if fault == "nan":
        nodes += [helper.make_node("Neg", ["m"], ["minus_m"]),
                  helper.make_node("Sqrt", ["minus_m"], ["root"]),
                  helper.make_node("Add", ["z", "root"], [logits])]
    elif fault == "error":
        nodes += [helper.make_node("ReduceMax", ["m"], ["top"], keepdims=0),
                  helper.make_node("Ceil", ["top"], ["up"]),
                  helper.make_node("Cast", ["up"], ["up_int"], to=TensorProto.INT64),
                  helper.make_node("Mul", ["up_int", "hundred"], ["offset"]),
                  helper.make_node("Add", ["columns", "offset"], ["index"]),
                  helper.make_node("Gather", ["z", "index"], [logits], axis=1),
                  numpy_helper.from_array(np.int64(100), "hundred"),
                  numpy_helper.from_array(np.arange(CLASSES, dtype=np.int64), "columns")]
    else:
        raise ValueError(f"fault {fault!r}: give 'nan' or 'error'")
    return _model(CLASSIFIER, SIZES[CLASSIFIER], nodes, CLASSES, logits)


def localizer() -> onnx.ModelProto:
    """(N, 1, 32, 32) -> [sigmoid(40 m - 2), BOX, softmax(36 k m - 2 k^2)]."""
    k = np.arange(CLASSES)
    (y,) = output_names("localize")
    nodes = _linear(SIZES[LOCALIZER], [40.0, 0, 0, 0, 0, *(36.0 * k)], [-2.0, *BOX, *(-2.0 * k**2)])
    nodes += [numpy_helper.from_array(np.array([1, 4, CLASSES], np.int64), "parts"),
              helper.make_node("Split", ["z", "parts"], ["p_raw", "box", "scores"], axis=1),
              helper.make_node("Sigmoid", ["p_raw"], ["p_c"]),
              helper.make_node("Softmax", ["scores"], ["classes"], axis=1),
              helper.make_node("Concat", ["p_c", "box", "classes"], [y], axis=1)]
    return _model(LOCALIZER, SIZES[LOCALIZER], nodes, 5 + CLASSES, y)


def card(name: str, version: int) -> ModelCard:
    size, task = SIZES[name], TASKS[name]
    return ModelCard(name=name, version=str(version), task=task, labels=LABELS,
                     input=InputSpec(channels=1, height=size, width=size, mean=[0.0], std=[1.0]),
                     outputs=card_outputs(task), architecture="tiny-linear", opset=OPSET)


def write_repository(root: Path, version: int = 1) -> dict[str, TinyModel]:
    """Write both models as `<root>/<name>/<version>/` and describe what was written."""
    written = {}
    for name, build in ((CLASSIFIER, classifier), (LOCALIZER, localizer)):
        folder, made = write_version(build(), lambda number, name=name: card(name, number),
                                     output=root, name=name, version=version)
        written[name] = TinyModel(name, TASKS[name], SIZES[name], folder, made)
    return written


# --- versions added by a test -----------------------------------------------------------------
def publish(version_dir: Path, files: dict[str, bytes | Path]) -> None:
    """Write a version folder atomically: fill a temporary folder beside it, then rename it into
    place, so the service never sees half a version. A Path value is copied, bytes are written."""
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=version_dir.parent))
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copy2(content, tmp / name)
        else:
            (tmp / name).write_bytes(content)
    os.rename(tmp, version_dir)


def publish_copy(model_dir: Path, source: str, target: str) -> None:
    """Publish version `target` of a model as a copy of its version `source`."""
    src = model_dir / source
    publish(model_dir / target, {p.name: p for p in src.iterdir() if p.is_file()})


# --- images -----------------------------------------------------------------------------------
def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def grey(k: int, size: int = 28) -> np.ndarray:
    """A uniform grey image of class k (level 255 k / 9, rounded)."""
    return np.full((size, size), round(255 * k / 9), dtype=np.uint8)


def bar(rows: int, size: int = 28) -> np.ndarray:
    """Black with its top `rows` rows white: brightness rows / size. Half the rows white is a tie
    between two classes; sample_images avoids it."""
    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[:rows] = 255
    return pixels


# Bars of twelve heights: classes 1, 2, 3, 3, 4, 5, 5, 6, 7, 7, 8, 9 at 28x28, none a tie.
SAMPLE_ROWS = (3, 5, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27)


def sample_images(count: int = len(SAMPLE_ROWS), size: int = 28) -> list[np.ndarray]:
    """`count` distinct images (bars), each with probabilities unlike the others'."""
    return [bar(rows * size // 28, size) for rows in SAMPLE_ROWS[:count]]


def sample_pngs(count: int = 4, size: int = 28) -> list[bytes]:
    return [png_bytes(pixels) for pixels in sample_images(count, size)]
