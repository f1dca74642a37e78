"""The Open Inference Protocol (KServe v2, Triton's HTTP/gRPC API), independent of the wire.

The HTTP and gRPC front ends parse their bodies into an `InferRequest`, call `infer`, and
write the `InferResponse` back; metadata, the model configuration, the repository index and
the statistics are plain dicts here, which HTTP sends as JSON and gRPC parses into its messages.

A Waldo model takes one of two inputs per request:

    image   BYTES [-1, 1]        encoded images (PNG, JPEG, ...), preprocessed from the ModelCard
    input   FP32  [-1, C, H, W]  tensors already preprocessed

and gives `probabilities` FP32 [-1, K] (classification: the softmax of the network's logits) or
the card's localization output `y` FP32 [-1, 5 + K]. The classification extension turns an
output into BYTES [-1, N] of "score:index:label" strings, best first.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

import numpy as np

from httpapi.errors import ApiError, shown
from serving.inputs import Item, check_answer_bytes, finite_float32, flatten, float32_values
from serving.lifecycle import Lifecycle
from serving.modelcard import ModelCard
from serving.processing import softmax

if TYPE_CHECKING:
    from serving.versions import Routed

IMAGE_INPUT, TENSOR_INPUT = "image", "input"
PROBABILITIES = "probabilities"
EXTENSIONS = ["classification", "binary_tensor_data", "model_repository", "statistics",
              "model_configuration"]
_LENGTH = struct.Struct("<I")  # BYTES elements are each prefixed with their length
# The classification extension's count: larger counts are clamped to the classes; this only
# keeps the parameter a sane integer (gRPC carries it as an int64).
MAX_CLASSIFICATION = 2**31 - 1
# What one answer value may take: an FP32 in JSON text ("-1.1754943508222875e-38" and its comma),
# and a classification string's score ("%.9g" of a probability: "1.17549435e-38").
JSON_FLOAT_BYTES, SCORE_BYTES = 25, 15


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    # Raw little-endian bytes (binary), JSON values, or gRPC's typed contents: FP32 as a float32
    # array, BYTES as an iterator over the message's elements.
    data: bytes | list | np.ndarray | Iterator[bytes] | None


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request's default
    classification: int = 0  # > 0: the top-N "score:index:label" strings instead of values


@dataclass
class InferRequest:
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    id: str | None = None
    binary_output: bool = False  # the default for outputs that do not say


@dataclass
class OutputTensor:
    name: str
    datatype: str  # FP32 or BYTES
    shape: list[int]
    array: np.ndarray  # float32, or an object array of bytes
    binary: bool = False

    def raw(self) -> bytes:
        """The tensor as the binary extension and gRPC's raw contents carry it."""
        if self.datatype == "BYTES":
            return b"".join(_LENGTH.pack(len(v)) + v for v in self.array.reshape(-1))
        return np.ascontiguousarray(self.array, dtype="<f4").tobytes()

    def values(self) -> list:
        """The tensor flattened in row-major order, as JSON `data` carries it."""
        flat = self.array.reshape(-1)
        if self.datatype == "BYTES":
            return [v.decode() for v in flat]
        return flat.tolist()


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str | None
    outputs: list[OutputTensor]


def bad(message: str) -> ApiError:
    return ApiError(400, "invalid_input", message)


# -- what the server and a model look like over the protocol ---------------------------------
def server_metadata() -> dict:
    try:
        release = version("waldo")
    except PackageNotFoundError:  # run from a source tree that was never installed
        release = "0"
    return {"name": "waldo", "version": release, "extensions": EXTENSIONS}


def output_name(card: ModelCard) -> str:
    return PROBABILITIES if card.task == "classify" else card.outputs[0].name


def output_width(card: ModelCard) -> int:
    return len(card.labels) + (5 if card.task == "localize" else 0)


def model_metadata(served: Routed) -> dict:
    model = served.loaded()
    spec = model.card.input
    return {
        "name": served.name, "versions": [side.version for side in served.versions()],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1, 1]},
                   {"name": TENSOR_INPUT, "datatype": "FP32",
                    "shape": [-1, spec.channels, spec.height, spec.width]}],
        "outputs": [{"name": output_name(model.card), "datatype": "FP32",
                     "shape": [-1, output_width(model.card)]},
                    *({"name": name, "datatype": "FP32", "shape": shape}
                      for name, shape in extra_shapes(model.card).items())],
    }


def extra_shapes(card: ModelCard) -> dict[str, list[int]]:
    """The outputs that explain an answer (`ModelCard.explain`), which a request may name: each
    stage's maps (-1, C, h, w) and the weights (no batch axis)."""
    spec = card.explain
    if spec is None:
        return {}
    return {name: [-1, *shape] if spec.per_image(name) else list(shape)
            for name, shape in spec.shapes().items()}


def model_config(served: Lifecycle) -> dict:
    """Triton's model configuration (its JSON form), which `perf_analyzer` and Triton's
    clients read: the batch axis is implicit (`max_batch_size`), and either input may be sent."""
    model = served.loaded()
    spec, s = model.card.input, served.settings
    return {
        "name": served.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": s.max_batch_size,
        "input": [{"name": IMAGE_INPUT, "data_type": "TYPE_STRING", "dims": [1], "optional": True},
                  {"name": TENSOR_INPUT, "data_type": "TYPE_FP32",
                   "dims": [spec.channels, spec.height, spec.width], "optional": True}],
        "output": [{"name": output_name(model.card), "data_type": "TYPE_FP32",
                    "dims": [output_width(model.card)],
                    **({"label_filename": "labels"} if model.card.task == "classify" else {})}],
        "dynamic_batching": {"max_queue_delay_microseconds": int(s.max_delay_ms * 1000)},
        "instance_group": [{"kind": "KIND_CPU" if model.providers[0].startswith("CPU") else "KIND_GPU",
                            "count": 1}],
    }


def repository_index(models: dict[str, Lifecycle], ready_only: bool = False) -> list[dict]:
    rows = []
    for name, served in models.items():
        if served.model is not None:
            rows.append({"name": name, "version": served.model.version, "state": "READY", "reason": ""})
        elif not ready_only:
            rows.append({"name": name, "version": "", "state": "UNAVAILABLE",
                         "reason": served.error or "not loaded"})
    return rows


def check_version(served: Routed, version: str | None) -> None:
    """404 when the request names a version that is not served (the primary, or a rollout's
    candidate: serving.versions.Routed)."""
    served.side_for(version)


# -- inputs -----------------------------------------------------------------------------------
def _elements(shape: list[int], name: str) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise bad(f"input {name!r}: shape must be a list of non-negative integers, got {shown(shape)}")
    return math.prod(shape)


def _flat(data, name: str) -> list:
    """JSON `data` may be flat or nested in row-major order."""
    if not isinstance(data, list):
        raise bad(f"input {name!r}: 'data' must be a list")
    return flatten(data)


def _images(tensor: InputTensor, max_images: int) -> list[Item]:
    if tensor.datatype != "BYTES":
        raise bad(f"input {IMAGE_INPUT!r} has datatype {shown(tensor.datatype)}; it takes BYTES "
                  "(encoded images)")
    count = _elements(tensor.shape, IMAGE_INPUT)
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise bad(f"input {IMAGE_INPUT!r} has shape {shown(tensor.shape)}; it takes [n] or [n, 1] "
                  "(one image each)")
    if count > max_images:  # before the data: at most count + 1 elements are ever read
        raise ApiError(413, "too_many", f"{count} images in one request; the limit is {max_images}")
    if isinstance(tensor.data, bytes | bytearray | memoryview):
        blobs, view, at = [], memoryview(tensor.data), 0
        while at < len(view):
            if at + 4 > len(view):
                raise bad(f"input {IMAGE_INPUT!r}: binary data ends inside an element's length prefix")
            (size,) = _LENGTH.unpack_from(view, at)
            at += 4
            if at + size > len(view):
                raise bad(f"input {IMAGE_INPUT!r}: an element claims {size} bytes; {len(view) - at} remain")
            blobs.append(bytes(view[at:at + size]))
            at += size
            if len(blobs) > count:
                break
    else:  # JSON: each element is the image base64-encoded (JSON strings cannot hold raw bytes)
        blobs = []
        elements = tensor.data if isinstance(tensor.data, Iterator) else _flat(tensor.data, IMAGE_INPUT)
        for i, value in enumerate(itertools.islice(elements, count + 1)):
            if isinstance(value, bytes):  # gRPC's bytes_contents, read one at a time
                blobs.append(value)
                continue
            if not isinstance(value, str):
                raise bad(f"input {IMAGE_INPUT!r} element {i} is {type(value).__name__}; send each image "
                          "base64-encoded as a string (or as binary data)")
            try:
                blobs.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                raise bad(f"input {IMAGE_INPUT!r} element {i} is not valid base64") from None
    if len(blobs) != count:
        raise bad(f"input {IMAGE_INPUT!r}: shape {shown(tensor.shape)} holds {count} elements but the "
                  f"data has {len(blobs) if len(blobs) <= count else 'more'}")
    return [(f"{IMAGE_INPUT}[{i}]", blob) for i, blob in enumerate(blobs)]


def _tensor(tensor: InputTensor, card: ModelCard, max_images: int) -> list[Item]:
    spec = card.input
    chw = [spec.channels, spec.height, spec.width]
    if tensor.datatype != "FP32":
        raise bad(f"input {TENSOR_INPUT!r} has datatype {shown(tensor.datatype)}; it takes FP32")
    count = _elements(tensor.shape, TENSOR_INPUT)
    shape = tensor.shape
    if len(shape) != 4 or shape[1:] != chw:
        dims = ", ".join(map(str, chw))
        raise bad(f"input {TENSOR_INPUT!r} has shape {shown(shape)}; this model takes [n, {dims}] "
                  "(batch, channels, height, width), preprocessed")
    binary = isinstance(tensor.data, bytes | bytearray | memoryview)
    if binary and len(tensor.data) != count * 4:
        raise bad(f"input {TENSOR_INPUT!r}: shape {shape} is {count} FP32 values = {count * 4} "
                  f"bytes, but {len(tensor.data)} bytes came")
    typed = isinstance(tensor.data, np.ndarray)  # gRPC's fp32_contents
    values = None if binary else tensor.data if typed else _flat(tensor.data, TENSOR_INPUT)
    if values is not None and len(values) != count:
        raise bad(f"input {TENSOR_INPUT!r}: shape {shape} holds {count} values but the data has "
                  f"{len(values)}")
    if shape[0] > max_images:
        raise ApiError(413, "too_many", f"{shape[0]} tensors in one request; the limit is {max_images}")

    def where(i: int) -> str:  # the data hold `count` values: the index is within the shape
        index = [int(k) for k in np.unravel_index(i, shape)]
        return f"input {TENSOR_INPUT!r}: value {i} (index {index} of shape {shape})"

    if values is None or typed:
        x = finite_float32(np.frombuffer(tensor.data, dtype="<f4") if values is None else values, where)
    else:
        x = float32_values(values, where)
    return [x.reshape(shape)]


def to_items(request: InferRequest, card: ModelCard, max_images: int) -> list[Item]:
    """The request's one input -> the lifecycle's items; 400 naming what is wrong."""
    known = {IMAGE_INPUT: "BYTES [-1, 1]", TENSOR_INPUT: "FP32 [-1, C, H, W]"}
    for tensor in request.inputs:
        if tensor.name not in known:
            raise bad(f"unknown input {shown(tensor.name)}; this model takes "
                      + " or ".join(f"{k!r} ({v})" for k, v in known.items()))
    if len(request.inputs) != 1:
        names = [t.name for t in request.inputs]
        raise bad(f"send exactly one input, {IMAGE_INPUT!r} or {TENSOR_INPUT!r}; "
                  f"got {shown(names) if names else 'none'}")
    (tensor,) = request.inputs
    if tensor.name == IMAGE_INPUT:
        return _images(tensor, max_images)
    return _tensor(tensor, card, max_images)


# -- outputs ----------------------------------------------------------------------------------
def _classification(card: ModelCard, probs: np.ndarray, top: int) -> np.ndarray:
    top = min(top, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    rows = [[f"{p[k]:.9g}:{k}:{card.labels[k]}".encode() for k in ks] for p, ks in zip(probs, order)]
    array = np.empty((len(rows), top), dtype=object)
    array[:] = rows
    return array


def encode(request: InferRequest, card: ModelCard, out: np.ndarray,
           extras: Mapping[str, np.ndarray] | None = None) -> list[OutputTensor]:
    """The network's rows and the extra outputs fetched (`requested_extras`) -> the requested
    outputs (checked by `check_outputs`)."""
    extras = extras or {}
    name = output_name(card)
    values = softmax(out.astype(np.float64)).astype(np.float32) if card.task == "classify" else out
    tensors = []
    for requested in request.outputs or [RequestedOutput(name)]:
        binary = request.binary_output if requested.binary is None else requested.binary
        if requested.name != name:  # an extra output (`extra_shapes`), as the file gave it
            array = extras[requested.name]
            tensors.append(OutputTensor(requested.name, "FP32", list(array.shape), array, binary))
        elif requested.classification:
            array = _classification(card, values, requested.classification)
            tensors.append(OutputTensor(name, "BYTES", list(array.shape), array, binary))
        else:
            tensors.append(OutputTensor(name, "FP32", list(values.shape), values, binary))
    return tensors


def check_outputs(request: InferRequest, card: ModelCard) -> None:
    """Refuse a bad output request before any work is done. Each output may be named once: a
    request naming `probabilities` 5,000 times made a 64 MB answer out of 0.3 MB."""
    name = output_name(card)
    extra = extra_shapes(card)
    named = set()
    for requested in request.outputs:
        if requested.name != name and requested.name not in extra:
            offered = ", ".join(map(repr, [name, *extra]))
            raise bad(f"unknown output {shown(requested.name)}; this model gives {offered}")
        if requested.name in named:
            raise bad(f"output {requested.name!r} is requested more than once; name each output once")
        named.add(requested.name)
        top = requested.classification
        if top and requested.name != name:
            raise bad(f"output {requested.name!r}: the classification extension applies to {name!r} only")
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_CLASSIFICATION:
            raise bad(f"output {name!r}: classification must be a count from 1 to {MAX_CLASSIFICATION} "
                      f"(0: the values), got {shown(top)}")
        if requested.classification and card.task != "classify":
            raise bad(f"the classification extension applies to classification models; "
                      f"{card.name!r} localizes (read {name!r}: [p_c, x, y, w, h, p_1..p_K])")


def answer_bytes(request: InferRequest, card: ModelCard, rows: int) -> int:
    """An upper bound of the answer's size, from the request alone: rows x each output's width
    x the bytes of one value in the wire format asked for (4 as binary FP32, JSON text otherwise;
    classification strings at their longest: the longest score, index and label), and the
    request's id, which the answer echoes (12 bytes a character at most, escaped). gRPC carries
    every output as binary."""
    width = output_width(card)
    extra = extra_shapes(card)
    total = 1024 + 12 * len(request.id or "")  # the head: names, version, shapes, the id
    for requested in request.outputs or [RequestedOutput(output_name(card))]:
        binary = request.binary_output if requested.binary is None else requested.binary
        if requested.name in extra:
            shape = extra[requested.name]
            count = math.prod(shape[1:]) * rows if shape[0] == -1 else math.prod(shape)
            total += count * (4 if binary else JSON_FLOAT_BYTES)
            continue
        if not requested.classification:
            total += rows * width * (4 if binary else JSON_FLOAT_BYTES)
            continue
        longest = max(len(label.encode() if binary else json.dumps(label, ensure_ascii=False)[1:-1].encode())
                      for label in card.labels)
        string = SCORE_BYTES + 1 + len(str(width - 1)) + 1 + longest
        total += rows * min(requested.classification, width) * (string + (4 if binary else 3))
    return total


def requested_extras(request: InferRequest, card: ModelCard) -> tuple[str, ...]:
    """The extra outputs a request names, which the session must fetch besides the prediction."""
    extra = extra_shapes(card)
    return tuple(r.name for r in request.outputs if r.name in extra)


def rows_of(items: list[Item]) -> int:
    """The batch rows a request's items become (an array holds n rows or one)."""
    return sum(len(item) if isinstance(item, np.ndarray) and item.ndim == 4 else 1 for item in items)


async def infer(served: Routed, protocol: str, parse, version: str | None = None,
                headers: Mapping[str, str] | None = None) -> InferResponse:
    """One inference through the model's lifecycle: `await parse()` gives the InferRequest (a
    front end reads its body there, so that a batch being formed waits for it). The version
    asked for, else the rollout's pick by `headers` (serving.versions.Routed.route), answers."""
    with served.request(protocol, headers=headers or {}, version=version) as trace:
        parsed: list[InferRequest] = []

        async def read(card: ModelCard) -> list[Item]:
            request = await parse()
            parsed.append(request)
            check_outputs(request, card)
            trace.fetch = requested_extras(request, card)
            items = to_items(request, card, served.settings.max_images)
            size = answer_bytes(request, card, rows_of(items))
            check_answer_bytes(size, served.settings.max_response_bytes)
            return items

        done = await served.predict(read, trace)
        request = parsed[0]
        with served.encoding(trace):
            outputs = encode(request, done.model.card, done.out, done.extras)
        return InferResponse(served.name, done.model.version, request.id, outputs)
