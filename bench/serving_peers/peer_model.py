"""The model as every peer server runs it: one ONNX Runtime session on the CPU provider and the
same per-request work as Waldo (decode the PNG, `serving.processing.preprocess` from the
ModelCard; softmax, or `serving.processing.postprocess` for friendly-API style answers).

Imported inside the peers' own virtual environments, so it needs only numpy, pillow, pydantic and
onnxruntime (`serving.processing` and `serving.modelcard` import nothing else).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

MAX_PIXELS = 4096 * 4096  # Waldo's default max_image_pixels
IMAGE_FORMATS = ("PNG", "JPEG")


class OnnxModel:
    def __init__(self, model_dir: str | Path, threads: int):
        import json

        import onnxruntime as ort

        from serving.modelcard import ModelCard

        self.dir = Path(model_dir)
        self.card = ModelCard.model_validate(json.loads((self.dir / "modelcard.json").read_text()))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.dir / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        spec = self.card.input
        self.shape = (spec.channels, spec.height, spec.width)  # (C, H, W)
        self.name = self.card.name

    def decode(self, data: bytes | str) -> tuple[np.ndarray, tuple[int, int]]:
        """An encoded image (or its base64 text) -> the (C, H, W) input and the image's size."""
        from PIL import Image

        from serving.processing import preprocess

        if isinstance(data, str):
            data = base64.b64decode(data, validate=True)
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        if image.size[0] * image.size[1] > MAX_PIXELS:
            raise ValueError(f"image of {image.size} is over {MAX_PIXELS} pixels")
        image.load()
        return preprocess(self.card, image), image.size

    def tensor(self, value) -> tuple[np.ndarray, tuple[int, int]]:
        """A preprocessed (C, H, W) tensor (nested lists or an array), checked like Waldo does."""
        x = np.asarray(value, dtype=np.float32).reshape(-1)
        if x.size != int(np.prod(self.shape)) or not np.isfinite(x).all():
            raise ValueError(f"bad tensor of {x.size} values; want {self.shape}")
        return x.reshape(self.shape), (self.shape[2], self.shape[1])

    def item(self, value) -> tuple[np.ndarray, tuple[int, int]]:
        """One friendly-API instance: {"b64": ...} or a tensor."""
        if isinstance(value, dict):
            return self.decode(value["b64"])
        return self.tensor(value)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 -> (B, K) logits, one ORT run."""
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})
        return np.asarray(out, dtype=np.float32)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """What Waldo's v2 `probabilities` output holds: the softmax of the logits, (B, K) FP32."""
        from serving.processing import softmax

        return softmax(self.logits(batch).astype(np.float64)).astype(np.float32)

    def predictions(self, logits: np.ndarray, sizes: list[tuple[int, int]]) -> list:
        """What Waldo's friendly API answers: softmax + top-5 labels per image."""
        from serving.processing import postprocess

        return postprocess(self.card, logits, sizes, top_k=5)


def v2_inputs(inputs: dict, model: OnnxModel) -> list[np.ndarray]:
    """A v2 request's inputs ({name: array}) -> its images as (C, H, W) arrays: `image` BYTES
    [n] or [n, 1] (encoded, or base64 text from JSON) or `input` FP32 [n, C, H, W], exactly one."""
    if ("image" in inputs) == ("input" in inputs):
        raise ValueError("send exactly one of the inputs 'image' and 'input'")
    if "image" in inputs:
        return [model.decode(v if isinstance(v, (bytes, str)) else bytes(v))[0]
                for v in np.asarray(inputs["image"], dtype=object).reshape(-1)]
    x = np.asarray(inputs["input"], dtype=np.float32).reshape(-1, *model.shape)
    if not np.isfinite(x).all():
        raise ValueError("input holds NaN or infinity")
    return list(x)
