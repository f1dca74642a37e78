"""The model every server serves and the request bodies every client sends (driver side)."""

from __future__ import annotations

import base64
import io
import json
import struct
from pathlib import Path


def build_model(name: str, size: int, out: Path) -> Path:
    """Export an untrained classifier (10 classes) at `size` px into `out`; return its version folder."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from training.export.card import build_card, output_names
    from training.export.layout import write_version
    from training.export.parity import export_checked
    from training.export.source import CheckpointRecord
    from training.models import get_model_info
    from training.tasks import ClassificationTask

    torch.manual_seed(0)
    channels = get_model_info(name).default_input[0]
    task = ClassificationTask(model_name=name, num_classes=10, in_channels=channels,
                              image_size=size).eval()
    exported = export_checked(task.net, (channels, size, size), output_names=output_names("classify"))
    record = CheckpointRecord(task="classify", hparams=dict(task.hparams))
    path, _ = write_version(exported.model, lambda v: build_card(record, name=name, version=v,
                                                                 opset=18), output=out, name=name)
    return path


def make_payloads(model_dir: Path, kind: str, image_px: int | None, work: Path) -> dict:
    """Write the request bodies for one image into `work`; return their paths and sizes.

    friendly   Waldo's friendly JSON (also Ray Serve's, BentoML's, LitServe's): `{"instances":
               [{"b64": PNG}]}` or `{"instances": [tensor]}` for --payload tensor
    mlflow     `{"inputs": [tensor]}`: MLflow's pyfunc server cannot decode images
    v2         v2 JSON with `input` FP32 [1, C, H, W] (the sanity check and the aiohttp v2 rows
               with --payload tensor) or `image` BYTES [1, 1] as base64 text (--payload image)
    pa         perf_analyzer's --input-data: data for ONE input (it sends every input it has
               data for): `image` as a 4-byte little-endian length + the PNG, or `input`
    """
    import numpy as np
    from PIL import Image

    from serving.processing import preprocess
    from serving.repository import load_card

    card = load_card(model_dir / "modelcard.json")
    spec = card.input
    rng = np.random.default_rng(0)
    w = h = image_px or spec.width
    mode = "L" if spec.channels == 1 else "RGB"
    shape = (h, w) if mode == "L" else (h, w, 3)
    # A smooth gradient plus noise: compresses like a photo, not like pure noise.
    base = np.add.outer(np.linspace(0, 160, h), np.linspace(0, 80, w))
    base = base if mode == "L" else base[..., None] + np.array([0, 40, 80])
    pixels = np.clip(base + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG")
    png = buf.getvalue()
    x = preprocess(card, Image.open(io.BytesIO(png)))  # (C, H, W) float32
    tensor = x.tolist()
    b64 = base64.b64encode(png).decode()
    v2_tensor = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, *x.shape],
                             "data": x.reshape(-1).tolist()}]}
    if kind == "image":
        friendly = {"instances": [{"b64": b64}]}
        v2 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1], "data": [b64]}]}
        pa = {"data": [{"image": {"content": {"b64": base64.b64encode(
            struct.pack("<I", len(png)) + png).decode()}, "shape": [1]}}]}
    else:
        friendly = {"instances": [tensor]}
        v2 = v2_tensor
        pa = {"data": [{"input": {"content": x.reshape(-1).tolist(), "shape": list(x.shape)}}]}
    bodies = {"friendly": friendly, "mlflow": {"inputs": [tensor]}, "v2": v2,
              "v2-tensor": v2_tensor, "pa": pa}
    paths = {}
    for key, body in bodies.items():
        paths[key] = work / f"body-{key}.json"
        paths[key].write_text(json.dumps(body))
    return {"paths": paths, "png_bytes": len(png), "tensor": x, "kind": kind,
            "sizes": {k: p.stat().st_size for k, p in paths.items()}}
