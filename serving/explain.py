"""Why a served model answered what it did, from ONNX Runtime alone (no torch).

For one image: the maps of every conv stage and a class activation map for the predicted class
or one the caller names. Where the head averages the last stage globally and then applies one
linear layer (resnet, googlenet), the map is CAM: the class's weights over the last stage's maps,
which the file gives as extra outputs (`ModelCard.explain`, written by the export); one run
gives everything, and for such a head CAM is exactly Grad-CAM's map. Any other model (a
flattening dense head, a localizer, a file exported without the outputs) gets occlusion: the
image again with a window blanked out at each of a grid of places, batched through the same
session, the map being how much the class's score drops where the window covers; its forward
passes are capped by the `explain_passes` budget.

Torch-free. `class_map` takes the function that runs a batch: the endpoint
(serving.routes.explain) runs the passes through the model's lifecycle (decode, queue, infer), so
an explanation meets the limits a prediction meets and counts each forward pass it costs;
`waldo explain` on an ONNX version runs them on its own session.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from httpapi.errors import ApiError, shown
from serving import pictures
from serving.modelcard import FirstConvSpec, ModelCard, StageSpec
from serving.processing import softmax

DISPLAY_SIDE = 224  # the overlay and the input are drawn this many pixels on their long side
JSON_FLOAT_BYTES = 24  # a float32 as JSON text, at its longest
# One picture as base64, at most: a grid of 16 maps of 56 px is about 0.5 MB before
# compression, 64 filters of 48 px about 0.8 MB; the input and overlay are 224 px.
PICTURE_BYTES = 2**20


@dataclass
class Target:
    """The class a map explains: its index, label, output column and score (probability)."""

    index: int
    label: str
    column: int
    score: float


def parse_target(card: ModelCard, asked: str | None) -> int | None:
    """The class index `asked` names (a label, or `#N` for index N), None for the predicted
    class; 422 naming what is accepted otherwise."""
    if asked is None or asked == "":
        return None
    labels = card.labels
    if asked in labels:  # a label wins over the #N form
        return labels.index(asked)
    if asked.startswith("#") and asked[1:].isdigit():
        index = int(asked[1:])
        if index < len(labels):
            return index
        raise ApiError(422, "invalid_target", f"class index {shown(asked)} is out of range; "
                                              f"{card.name!r} has classes #0 to #{len(labels) - 1}")
    listed = ", ".join(map(repr, labels[:10])) + (f" (+{len(labels) - 10} more)" if len(labels) > 10 else "")
    raise ApiError(422, "invalid_target", f"unknown class {shown(asked)}; give a label ({listed}) "
                                          f"or #N for class index N")


def choose_stages(card: ModelCard, asked: list[str]) -> list[StageSpec]:
    """The stages to return: those asked for by output name (`stage_1`, ...), else all; 422 for
    a name the file does not have."""
    have = card.explain.stages if card.explain is not None else []
    if not asked:
        return list(have)
    by_name = {s.output: s for s in have}
    unknown = [a for a in asked if a not in by_name]
    if unknown:
        offered = ", ".join(by_name) or "none (the file was exported without explain outputs)"
        raise ApiError(422, "invalid_stage", f"unknown stage {shown(unknown[0])}; {card.name!r} has "
                                             f"{offered}")
    return [by_name[a] for a in dict.fromkeys(asked)]


def uses_cam(card: ModelCard) -> bool:
    return card.explain is not None and card.explain.cam_weight is not None and bool(card.explain.stages)


def first_layer_maps(conv: FirstConvSpec, x: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """The first conv layer's maps (F, h, w) of one image x (C, H, W): `filters` (F, C, kh, kw)
    correlated with the zero-padded image at the card's stride and dilation, plus the bias."""
    (sy, sx), (py, px), (dy, dx) = conv.stride, conv.padding, conv.dilation
    kh, kw = filters.shape[-2:]
    padded = np.pad(np.asarray(x, np.float32), ((0, 0), (py, py), (px, px)))
    windows = np.lib.stride_tricks.sliding_window_view(
        padded, (dy * (kh - 1) + 1, dx * (kw - 1) + 1), axis=(1, 2))[:, ::sy, ::sx, ::dy, ::dx]
    maps = np.einsum("chwij,fcij->fhw", windows, filters.astype(np.float32), optimize=True)
    if conv.bias is not None:
        maps += np.asarray(conv.bias, np.float32)[:, None, None]
    return maps


def outputs_to_fetch(card: ModelCard, stages: list[StageSpec]) -> tuple[str, ...]:
    """The extra outputs one explanation asks the session for."""
    spec = card.explain
    if spec is None:
        return ()
    names = [s.output for s in stages]
    if uses_cam(card):
        names += [spec.stages[-1].output, spec.cam_weight.output]
    if spec.filters is not None:  # the first layer's maps are computed from them
        names.append(spec.filters.output)
    return tuple(dict.fromkeys(names))


def answer_bytes(card: ModelCard, stages: list[StageSpec], arrays: bool) -> int:
    """An upper bound of the answer's size (`max_response_bytes`), from the request alone: each
    picture (input, overlay, one grid per stage, the filters and the first layer's maps) and
    the filters' values at PICTURE_BYTES, the map's values at their longest, and with `arrays`
    every stage's values as JSON text."""
    spec = card.input
    pictures_and_filters = (len(stages) + 5) * PICTURE_BYTES
    heat = spec.height * spec.width * JSON_FLOAT_BYTES
    values = sum(math.prod(s.shape) for s in stages) * JSON_FLOAT_BYTES if arrays else 0
    return 4096 + pictures_and_filters + heat + values


def resolve_target(card: ModelCard, row: np.ndarray, index: int | None) -> Target:
    """The class to explain from the prediction's output row: the one asked for, else the top."""
    if card.task == "classify":
        probs = softmax(row.astype(np.float64))
        k = int(np.argmax(probs)) if index is None else index
        return Target(k, card.labels[k], k, float(probs[k]))
    classes = row[5:]
    k = int(np.argmax(classes)) if index is None else index
    return Target(k, card.labels[k], 5 + k, float(classes[k]))


# -- the maps ----------------------------------------------------------------------------------
def unit(heat: np.ndarray) -> np.ndarray:
    """The positive part of a map scaled to [0, 1] (all zeros when nothing is positive)."""
    heat = np.maximum(np.asarray(heat, dtype=np.float64), 0)
    peak = heat.max(initial=0.0)
    return (heat / peak if peak > 0 else heat).astype(np.float32)


def class_activation_map(maps: np.ndarray, weight: np.ndarray, column: int) -> np.ndarray:
    """CAM at the last stage (h, w): class `column`'s weights over the C maps (C, h, w)."""
    return unit(np.tensordot(weight[column], maps, axes=1))


def occlusion_windows(height: int, width: int, passes: int) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of each occluding window: a g x g grid of places with
    g * g + 1 <= `passes` (the 1: the image itself), each window twice the grid's step so that
    neighbouring windows overlap and the map is smooth."""
    g = max(1, min(math.isqrt(max(passes - 1, 1)), height, width))
    side_y, side_x = max(1, round(2 * height / (g + 1))), max(1, round(2 * width / (g + 1)))
    tops = np.linspace(0, height - side_y, g).round().astype(int)
    lefts = np.linspace(0, width - side_x, g).round().astype(int)
    return [(int(t), int(t) + side_y, int(left), int(left) + side_x) for t in tops for left in lefts]


def occluded(x: np.ndarray, windows: list[tuple[int, int, int, int]]) -> np.ndarray:
    """(len(windows), C, H, W): the image (1, C, H, W) with each window set to 0, which in the
    normalized input is the training data's mean colour."""
    batch = np.repeat(x, len(windows), axis=0)
    for i, (top, bottom, left, right) in enumerate(windows):
        batch[i, :, top:bottom, left:right] = 0.0
    return batch


def occlusion_map(base: float, scores: np.ndarray, windows: list[tuple[int, int, int, int]],
                  height: int, width: int) -> np.ndarray:
    """(H, W): at each pixel, the mean drop of the score over the windows that cover it."""
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for drop, (top, bottom, left, right) in zip(base - np.asarray(scores, np.float64), windows, strict=True):
        total[top:bottom, left:right] += drop
        count[top:bottom, left:right] += 1
    return unit(np.divide(total, count, out=np.zeros_like(total), where=count > 0))


def score_column(card: ModelCard, out: np.ndarray, column: int) -> np.ndarray:
    """The score occlusion watches: the class's logit (classify), its probability (localize,
    whose file gives probabilities)."""
    return np.asarray(out, dtype=np.float64)[:, column]


# -- pictures ----------------------------------------------------------------------------------
def png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def seen_image(card: ModelCard, x: np.ndarray) -> np.ndarray:
    """The normalized input (C, H, W) back as uint8 pixels (H, W) or (H, W, 3)."""
    spec = card.input
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    pixels = np.clip((x * std + mean) / spec.scale, 0, 255).round().astype(np.uint8)
    return pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)


def draw(card: ModelCard, x: np.ndarray, heat: np.ndarray, extras: dict[str, np.ndarray],
         stages: list[StageSpec]) -> dict[str, Image.Image]:
    """The pictures of one explanation from the input (C, H, W), the map and the extra outputs:
    "input", "heatmap" (the overlay), one grid per stage by output name, "filters" where the
    file gives them and "first_layer" where the card also describes that layer."""
    image = pictures.scale_to(pictures.to_rgb(seen_image(card, x)), DISPLAY_SIDE)
    drawn = {"input": image, "heatmap": pictures.overlay(image, heat)}
    for stage in stages:
        maps = extras[stage.output][0]
        tiles, captions = pictures.map_tiles(maps)
        c, h, w = maps.shape
        drawn[stage.output] = pictures.grid(tiles, captions, columns=8,
                                            title=f"{stage.output} ({stage.module}): {c} maps {h}x{w}")
    spec = card.explain
    filters = extras.get(spec.filters.output) if spec is not None and spec.filters else None
    if filters is not None:
        drawn["filters"] = pictures.filter_grid(filters)
    if filters is not None and spec.first_conv is not None:
        maps = first_layer_maps(spec.first_conv, x, filters)
        tiles, captions = pictures.map_tiles(maps)
        drawn["first_layer"] = pictures.grid(tiles, captions, columns=8,
                                             title=f"first conv layer: {maps.shape[0]} maps")
    return drawn


def answer_parts(card: ModelCard, x: np.ndarray, heat: np.ndarray, extras: dict[str, np.ndarray],
                 stages: list[StageSpec], arrays: bool) -> dict:
    """The answer's pictures (`draw`, as base64 PNG) and arrays, as the endpoint returns them."""
    drawn = draw(card, x, heat, extras, stages)
    spec = card.explain
    parts: dict = {
        "input": {"png": png(drawn["input"]), "width": card.input.width, "height": card.input.height},
        "heatmap": {"png": png(drawn["heatmap"]), "height": int(heat.shape[0]),
                    "width": int(heat.shape[1]), "values": np.round(heat, 6).tolist()},
        "stages": [], "filters": None, "first_layer": None,
    }
    for stage in stages:
        maps = extras[stage.output][0]
        entry = {"name": stage.output, "module": stage.module, "shape": list(maps.shape),
                 "png": png(drawn[stage.output])}
        if arrays:
            entry["values"] = maps.tolist()
        parts["stages"].append(entry)
    if "filters" in drawn:
        weights = extras[spec.filters.output]
        parts["filters"] = {"png": png(drawn["filters"]), "shape": list(weights.shape),
                            "values": np.round(weights, 6).tolist()}
    if "first_layer" in drawn:
        parts["first_layer"] = {"png": png(drawn["first_layer"]),
                                "shape": list(spec.first_conv.shape)}
    return parts


async def class_map(card: ModelCard, x: np.ndarray, out: np.ndarray,
                    extras: dict[str, np.ndarray], target: Target, run, *, passes: int,
                    max_batch: int) -> tuple[np.ndarray, str, int]:
    """The map for `target` of one image x (1, C, H, W) whose prediction is `out` (1, ...):
    CAM from the extras where the card allows, else occlusion, its batch in chunks of
    `max_batch` through `await run(chunk)` (the prediction's rows). Returns (map, method,
    forward passes)."""
    if uses_cam(card):
        spec = card.explain
        return (class_activation_map(extras[spec.stages[-1].output][0],
                                     extras[spec.cam_weight.output], target.column), "cam", 1)
    height, width = x.shape[-2:]
    windows = occlusion_windows(height, width, passes)
    batch = occluded(x, windows)
    scores = [score_column(card, await run(batch[i:i + max_batch]), target.column)
              for i in range(0, len(batch), max_batch)]
    base = float(score_column(card, out, target.column)[0])
    return (occlusion_map(base, np.concatenate(scores), windows, height, width), "occlusion",
            1 + len(windows))


__all__ = ["Target", "answer_bytes", "answer_parts", "choose_stages", "class_activation_map",
           "class_map", "draw", "occluded", "occlusion_map", "occlusion_windows", "outputs_to_fetch",
           "parse_target", "resolve_target", "uses_cam"]
