"""Pictures a person can read, from plain arrays: colour maps, labelled grids, heat-map overlays
and boxes. numpy and Pillow only, no torch and no matplotlib, so that training (the pictures
logged with a run, `waldo explain`) and the inference service draw them the same way.

Arrays are numpy: images (H, W) or (H, W, 3) uint8, maps and weights float. Every function
returns a new Pillow image and leaves its inputs alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WHITE = (255, 255, 255)
TRUE_BOX, PREDICTED_BOX = (0, 200, 0), (230, 0, 0)  # green: the truth, red: the prediction

# Colour maps as anchor colours spaced evenly over [0, 1], interpolated linearly.
# Diverging (blue < 0 < red, white at 0), after Moreland's "cool to warm": for signed weights.
DIVERGING = np.array([(59, 76, 192), (141, 176, 254), (242, 242, 242), (244, 154, 123),
                      (180, 4, 38)], dtype=np.float32)
# Sequential, dark to bright (close to matplotlib's inferno): for activations and heat maps.
HEAT = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)],
                dtype=np.float32)


def apply_colormap(values: np.ndarray, anchors: np.ndarray = HEAT) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (..., 3); values outside are clipped."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    position = v * (len(anchors) - 1)
    low = np.minimum(position.astype(np.int64), len(anchors) - 2)
    t = (position - low)[..., None]
    rgb = anchors[low] * (1 - t) + anchors[low + 1] * t
    return np.round(rgb).astype(np.uint8)


def unit_range(values: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1]; a constant array becomes all zeros."""
    v = np.asarray(values, dtype=np.float32)
    lo, hi = float(v.min()), float(v.max())
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


def signed_range(values: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1] with 0 at 0.5 and the largest magnitude at 0 or 1, so that a diverging
    map shows the sign: white is zero, however the values lean."""
    v = np.asarray(values, dtype=np.float32)
    peak = float(np.abs(v).max())
    return 0.5 + 0.5 * v / peak if peak > 0 else np.full_like(v, 0.5)


def upscale(image: Image.Image, factor: int) -> Image.Image:
    """Bigger by a whole factor with nearest-neighbour, so each weight or pixel stays a square."""
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def scale_to(image: Image.Image, side: int) -> Image.Image:
    """Upscaled by the whole factor that brings its longer side closest to `side` (at least 1)."""
    return upscale(image, max(1, round(side / max(image.size))))


@cache
def font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font at `size` (no font files needed); its fixed bitmap font where Pillow
    was built without FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text_size(text: str, size: int) -> tuple[int, int]:
    if not text:
        return 0, 0
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox(
        (0, 0), text, font=font(size))
    return int(right - left), int(bottom - min(top, 0))


def to_rgb(image: np.ndarray | Image.Image) -> Image.Image:
    """An array (H, W) or (H, W, 3) of uint8, or a Pillow image, as an RGB image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def grid(tiles: Sequence[Image.Image], captions: Sequence[str] | None = None, *,
         columns: int = 8, title: str = "", pad: int = 6, text_size: int = 12) -> Image.Image:
    """Tiles in rows of `columns` on white, each with its caption below, and a title on top.
    Cells are as wide as the widest tile or caption and as high as the highest tile."""
    if not tiles:
        raise ValueError("a grid needs at least one tile")
    captions = list(captions or [""] * len(tiles))
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    line = _text_size("Ag", text_size)[1] + 2
    caption_h = line * max(c.count("\n") + 1 for c in captions) if any(captions) else 0
    cell_w = max(max(t.width for t in tiles),
                 *(_text_size(part, text_size)[0] for c in captions for part in c.split("\n")))
    cell_h = max(t.height for t in tiles) + caption_h
    title_h = _text_size(title, text_size + 2)[1] + pad if title else 0
    width = max(columns * (cell_w + pad) + pad, _text_size(title, text_size + 2)[0] + 2 * pad)
    canvas = Image.new("RGB", (width, title_h + rows * (cell_h + pad) + pad), WHITE)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad // 2), title, fill=(0, 0, 0), font=font(text_size + 2))
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        x = pad + (i % columns) * (cell_w + pad)
        y = title_h + pad + (i // columns) * (cell_h + pad)
        canvas.paste(tile.convert("RGB"), (x + (cell_w - tile.width) // 2, y))
        for n, part in enumerate(caption.split("\n") if caption else []):
            draw.text((x + (cell_w - _text_size(part, text_size)[0]) // 2,
                       y + max(t.height for t in tiles) + 1 + n * line),
                      part, fill=(0, 0, 0), font=font(text_size))
    return canvas


def stack(parts: Sequence[Image.Image], pad: int = 6) -> Image.Image:
    """Pictures one below the other, left-aligned, on white."""
    width = max(p.width for p in parts)
    canvas = Image.new("RGB", (width, sum(p.height for p in parts) + pad * (len(parts) - 1)), WHITE)
    y = 0
    for part in parts:
        canvas.paste(part.convert("RGB"), (0, y))
        y += part.height + pad
    return canvas


def filter_tiles(weights: np.ndarray, side: int = 48) -> tuple[list[Image.Image], str]:
    """A conv layer's weights (out, in, k, k) -> one upscaled tile per filter, each normalized on
    its own, and a line that says how to read them. Three input channels are shown as colour
    (min-max per filter); otherwise the mean over the input channels (the one channel for
    greyscale) on the diverging map, blue negative, white zero, red positive."""
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 4:
        raise ValueError(f"conv weights are (out, in, k, k), not {w.shape}")
    if w.shape[1] == 3:
        tiles = [to_rgb((unit_range(f.transpose(1, 2, 0)) * 255).round()) for f in w]
        how = "RGB, each filter min-max scaled"
    else:
        tiles = [to_rgb(apply_colormap(signed_range(f.mean(axis=0)), DIVERGING)) for f in w]
        channels = "1 channel" if w.shape[1] == 1 else f"mean of {w.shape[1]} channels"
        how = f"{channels}; blue < 0 < red, each filter scaled to its largest weight"
    return [scale_to(t, side) for t in tiles], how


def filter_grid(weights: np.ndarray, *, name: str = "first conv layer", side: int = 48,
                columns: int = 8) -> Image.Image:
    """The filters of a conv layer as a labelled grid (`filter_tiles`), numbered from 0."""
    tiles, how = filter_tiles(weights, side)
    out, _, kh, kw = np.asarray(weights).shape
    return grid(tiles, [str(i) for i in range(out)], columns=columns,
                title=f"{name}: {out} filters {kh}x{kw} ({how})")


def map_tiles(maps: np.ndarray, side: int = 56, limit: int = 16) -> tuple[list[Image.Image], list[str]]:
    """Feature maps (C, h, w) -> tiles of the `limit` channels with the largest mean activation,
    each min-max scaled on its own and coloured dark to bright, with "#channel" captions."""
    m = np.asarray(maps, dtype=np.float32)
    order = np.argsort(-m.reshape(len(m), -1).mean(axis=1), kind="stable")[:limit]
    tiles = [scale_to(to_rgb(apply_colormap(unit_range(m[c]))), side) for c in order]
    return tiles, [f"#{int(c)}" for c in order]


def feature_map_sheet(image: np.ndarray, stages: Sequence[tuple[str, np.ndarray]], *,
                      caption: str = "", side: int = 56, limit: int = 16) -> Image.Image:
    """One input image and its feature maps at every stage, one labelled block per stage:
    `stages` is [(stage name, maps (C, h, w))] in forward order."""
    top = grid([scale_to(to_rgb(image), side * 2)], [caption] if caption else None, columns=1,
               title="input")
    blocks = [top]
    for name, maps in stages:
        tiles, captions = map_tiles(maps, side, limit)
        c, h, w = np.asarray(maps).shape
        shown = f", the {len(tiles)} most active" if len(tiles) < c else ""
        blocks.append(grid(tiles, captions, columns=8,
                           title=f"{name}: {c} maps {h}x{w}{shown} (dark low, bright high)"))
    return stack(blocks)


def overlay(image: np.ndarray | Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """A heat map in [0, 1] (h, w), resized to the image and coloured dark to bright, blended
    over the image (greyscale shown as grey)."""
    base = to_rgb(image)
    h = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(
        base.size, Image.Resampling.BILINEAR)
    coloured = Image.fromarray(apply_colormap(np.asarray(h, dtype=np.float32) / 255))
    return Image.blend(base, coloured, alpha)


def draw_boxes(image: Image.Image, boxes: Sequence[tuple[tuple[float, float, float, float],
                                                      tuple[int, int, int], str]],
               width: int = 2) -> Image.Image:
    """Boxes (x, y, w, h as fractions of the image), each with its colour and a label drawn
    above its top-left corner."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    for (x, y, w, h), colour, label in boxes:
        x0, y0 = x * out.width, y * out.height
        x1, y1 = (x + w) * out.width, (y + h) * out.height
        draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=colour, width=width)
        if label:
            draw.text((x0 + 2, max(0.0, y0 - 12)), label, fill=colour, font=font(10))
    return out


def peak_share(heat: np.ndarray, mask: np.ndarray) -> float:
    """The mean of `heat` where `mask` holds over its mean elsewhere (inf when elsewhere is 0):
    above 1 when the map is brighter on the masked pixels (an object's strokes) than off them."""
    heat, mask = np.asarray(heat, dtype=np.float64), np.asarray(mask, dtype=bool)
    if mask.all() or not mask.any():
        raise ValueError("the mask must hold on some pixels and not on others")
    inside, outside = heat[mask].mean(), heat[~mask].mean()
    return float(inside / outside) if outside > 0 else float("inf")


__all__ = ["DIVERGING", "HEAT", "PREDICTED_BOX", "TRUE_BOX", "apply_colormap", "draw_boxes",
           "feature_map_sheet", "filter_grid", "filter_tiles", "font", "grid", "map_tiles",
           "overlay", "peak_share", "scale_to", "signed_range", "stack", "to_rgb", "unit_range",
           "upscale"]
