"""The pointing game: does a class map point at the object? (Zhang et al., 2016, "Top-down
neural attention by excitation backprop".) For each image a localizer got right, the map's
peak either falls inside the true box or not; the share that does is compared with the share
a peak at a random place of the map would reach.

numpy only: the maps come from `training.tracking.explain.pointing_game_for` (Grad-CAM or
HiResCAM at the last conv stage), from a served model's occlusion map, or from a test.
Boxes are (x, y, w, h) as fractions of the image, (x, y) the top-left corner, as in the
localization targets (`training.data.localization`).

A map may be in input pixels, or at its own resolution with a `grid` that says where its cells
sit on the input: ((start_y, step_y), (start_x, step_x)), cell (i, j) centred on the input
point (start_y + step_y * i, start_x + step_x * j), where pixel k spans [k, k + 1). Scoring the
map's own cells this way puts each peak where the network computed it; resizing a coarse map
to the input first moves it (a stretch ignores the pixels the convolutions lose at the border)
and blurs single-cell peaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Grid = tuple[tuple[float, float], tuple[float, float]]  # ((start_y, step_y), (start_x, step_x))
PIXELS: Grid = ((0.5, 1.0), (0.5, 1.0))  # a map in input pixels: cell k centred on pixel k


@dataclass(frozen=True)
class PointingGame:
    """The outcome over the scored images (those the network got right)."""

    scored: int  # images scored
    hits: int  # of them, those whose map peaks inside the true box
    share: float  # hits / scored (nan when nothing was scored)
    baseline: float  # the expected share for a peak at a uniformly random cell (nan: none scored)
    flat: int = 0  # scored maps with no single peak (all equal): their "peak" is the first cell
    method: str = ""  # how the maps were made, e.g. "HiResCAM"
    centre: float = float("nan")  # the share a pointer that always says "the image centre" gets
    sampled: float = float("nan")  # the baseline estimated by drawing random cells (`draws`)

    @property
    def ratio(self) -> float:
        """share / baseline: how many times better than pointing at random."""
        return self.share / self.baseline if self.baseline > 0 else float("nan")

    def line(self) -> str:
        return (f"pointing game ({self.method or 'maps'}): {self.hits}/{self.scored} peaks inside "
                f"the true box = {self.share:.3f}, random {self.baseline:.3f}, "
                f"ratio {self.ratio:.2f}, image centre {self.centre:.3f}")


def peaks(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each map's peak as (rows, columns): the argmax, the first in row-major order on ties."""
    maps = np.asarray(maps)
    flat = maps.reshape(len(maps), -1).argmax(axis=1)
    return flat // maps.shape[2], flat % maps.shape[2]


def centres(cells: tuple[int, int], grid: Grid = PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """The input coordinates of the centres of a map's rows and of its columns."""
    (start_y, step_y), (start_x, step_x) = grid
    return start_y + step_y * np.arange(cells[0]), start_x + step_x * np.arange(cells[1])


def _inside(ys: np.ndarray, xs: np.ndarray, boxes: np.ndarray,
            image: tuple[int, int]) -> np.ndarray:
    """Whether the input point (ys[n], xs[n]) lies in box n, edges included: a box of whole
    pixels (x, y, w, h) = (2, 3, 4, 5) px holds the centres of columns 2..5 and rows 3..7."""
    x, y, w, h = boxes.T * np.array([image[1], image[0], image[1], image[0]])[:, None]
    return (xs >= x) & (xs <= x + w) & (ys >= y) & (ys <= y + h)


def random_peak_share(boxes: np.ndarray, cells: tuple[int, int], *, grid: Grid = PIXELS,
                      image: tuple[int, int] | None = None) -> np.ndarray:
    """The chance, per box, that a peak at a uniformly random cell of the map lies inside it,
    exactly: the share of cell centres inside. For a map in input pixels and a box of whole
    pixels it is the box's area as a share of the image, w * h (as fractions)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ys, xs = centres(cells, grid)
    height, width = image or cells
    x, y, w, h = (boxes * [width, height, width, height]).T
    rows = ((ys >= y[:, None]) & (ys <= (y + h)[:, None])).sum(axis=1)
    columns = ((xs >= x[:, None]) & (xs <= (x + w)[:, None])).sum(axis=1)
    return rows * columns / (cells[0] * cells[1])


def sampled_baseline(boxes: np.ndarray, cells: tuple[int, int], *, grid: Grid = PIXELS,
                     image: tuple[int, int] | None = None, draws: int = 100,
                     seed: int = 0) -> float:
    """The random baseline estimated by drawing `draws` uniformly random cells per box, the
    share inside: it converges to `random_peak_share(...).mean()`, a check on that figure."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return float("nan")
    rng = np.random.default_rng(seed)
    ys, xs = centres(cells, grid)
    rows = rng.integers(0, cells[0], size=(draws, len(boxes)))
    cols = rng.integers(0, cells[1], size=(draws, len(boxes)))
    return float(np.mean([_inside(ys[r], xs[c], boxes, image or cells)
                          for r, c in zip(rows, cols)]))


def pointing_game(maps: np.ndarray, boxes: np.ndarray, scored: np.ndarray | None = None, *,
                  grid: Grid = PIXELS, image: tuple[int, int] | None = None, method: str = "",
                  draws: int = 0, seed: int = 0) -> PointingGame:
    """The pointing game over `maps` (N, h, w), any scale, with the true `boxes` (N, 4) and
    `scored` (N,) bool: the images the network got right (a localizer: object present, found,
    right class); the others are ignored, and None scores all. `grid` and `image` (the input's
    height and width; default the maps' own) place the maps' cells on the input, see the
    module's docstring; by default the maps are in input pixels. `draws` > 0 adds
    `sampled_baseline` with that many random cells per image."""
    maps, boxes = np.asarray(maps), np.asarray(boxes, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, h, w), not {maps.shape}")
    if boxes.shape != (len(maps), 4):
        raise ValueError(f"boxes must be (N, 4) x, y, w, h with N = {len(maps)}, not {boxes.shape}")
    keep = np.ones(len(maps), bool) if scored is None else np.asarray(scored, dtype=bool)
    if keep.shape != (len(maps),):
        raise ValueError(f"scored must be (N,) = ({len(maps)},) booleans, not {keep.shape}")
    maps, boxes = maps[keep], boxes[keep]
    if not len(maps):
        return PointingGame(0, 0, float("nan"), float("nan"), method=method)
    cells, image = maps.shape[1:], image or maps.shape[1:]
    ys, xs = centres(cells, grid)
    rows, cols = peaks(maps)
    hits = int(_inside(ys[rows], xs[cols], boxes, image).sum())
    middle = np.full(len(maps), image[0] // 2 + 0.5), np.full(len(maps), image[1] // 2 + 0.5)
    return PointingGame(
        len(maps), hits, hits / len(maps),
        float(random_peak_share(boxes, cells, grid=grid, image=image).mean()),
        flat=int((np.ptp(maps.reshape(len(maps), -1), axis=1) == 0).sum()), method=method,
        centre=float(_inside(*middle, boxes, image).mean()),
        sampled=sampled_baseline(boxes, cells, grid=grid, image=image, draws=draws, seed=seed)
        if draws > 0 else float("nan"))


__all__ = ["PIXELS", "Grid", "PointingGame", "centres", "peaks", "pointing_game",
           "random_peak_share", "sampled_baseline"]
