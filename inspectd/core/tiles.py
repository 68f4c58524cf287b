"""What the model looks at in a frame: the region of interest, and the tiles cut from it.

A model either sees the whole region resized to its input (the bundled model), or, when its version says
so (``ModelMeta.tiling``), overlapping square tiles of ``tile`` source pixels, each resized to its input
(no resize when ``tile`` equals the input side: the model sees native resolution). A small symbol on a
large frame survives tiling where it would be erased by shrinking the whole frame to a thumbnail.

Boxes are ``(x, y, w, h)`` in frame pixels. The image score is the highest tile score; the best tile's box
is the answer to "where".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inspectd.core.config import ModelConfig
from inspectd.core.preprocess import preprocess, to_gray
from inspectd.core.records import Box  # one definition: x, y, w, h in frame pixels
from inspectd.core.registry import ModelMeta


@dataclass(frozen=True, slots=True)
class View:
    """How frames become model inputs: the region (None: the whole frame) and the tiling (None: one)."""

    input_size: tuple[int, int]  # (height, width) of the model's input
    roi: tuple[float, float, float, float] | None = None  # x, y, w, h: pixels, or fractions when all <= 1
    tile: int | None = None  # tile side in frame pixels
    overlap: float = 0.25


def view_for(meta: ModelMeta, station: ModelConfig | None = None) -> View:
    """How a station looks at frames for a model version: the station's ``[model] roi``; its ``[model]
    tile`` when set (a whole-frame model used on tiles whose scale matches its training frames), else the
    version's own tiling, else none. The one place a view is made for a version."""
    roi = station.roi if station is not None else None
    if station is not None and station.tile is not None:
        overlap = 0.25 if station.tile_overlap is None else station.tile_overlap
        return View(meta.input_size, roi, station.tile, overlap)
    if meta.tiling is not None:
        return View(meta.input_size, roi, meta.tiling.tile, meta.tiling.overlap)
    return View(meta.input_size, roi)


def region(roi: tuple[float, float, float, float] | None, width: int, height: int) -> Box:
    """The ROI in pixels, clipped to the frame (the whole frame when there is none)."""
    if roi is None:
        return (0, 0, width, height)
    x, y, w, h = roi
    if max(roi) <= 1.0:
        x, y, w, h = x * width, y * height, w * width, h * height
    left, top = max(0, round(x)), max(0, round(y))
    right, bottom = min(width, round(x + w)), min(height, round(y + h))
    if right - left < 1 or bottom - top < 1:
        raise ValueError(f"the region of interest {roi} lies outside the {width}x{height} frame")
    return (left, top, right - left, bottom - top)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)  # the last tile sits on the edge: every pixel is covered
    return starts


def grid(area: Box, tile: int, overlap: float) -> list[Box]:
    """Overlapping square tiles covering ``area``, row by row."""
    x0, y0, w, h = area
    stride = max(1, round(tile * (1.0 - overlap)))
    tw, th = min(tile, w), min(tile, h)
    return [(x0 + dx, y0 + dy, tw, th) for dy in _starts(h, tile, stride) for dx in _starts(w, tile, stride)]


def boxes_for(view: View, width: int, height: int) -> list[Box]:
    area = region(view.roi, width, height)
    return [area] if view.tile is None else grid(area, view.tile, view.overlap)


@dataclass(frozen=True, slots=True)
class Shrink:
    """How ``cut`` makes tiles of one size from one shrink: the region (x0, y0, x1, y1) the tiles cover,
    shrunk to ``width`` x ``height`` pixels, ``fx``/``fy`` its scale."""

    region: tuple[int, int, int, int]
    width: int
    height: int
    fx: float
    fy: float

    def working_bytes(self, itemsize: int) -> int:
        """Memory ``cut`` holds besides the tiles: the shrunk region, resized and as float32."""
        return self.width * self.height * (itemsize + 4)


def shrink_for(boxes: list[Box], size: tuple[int, int]) -> Shrink | None:
    """The one-shrink plan of ``cut`` for ``boxes``, or None when each tile is resized on its own (one
    tile, tiles of several sizes, or tiles that would be enlarged: an enlarged frame would take the tiles'
    area times the scale; shrunk, the region has no more pixels than the tiles themselves)."""
    height, width = size
    sides = {(w, h) for _, _, w, h in boxes}
    if len(boxes) < 2 or len(sides) != 1:
        return None
    ((tw, th),) = sides
    if tw <= width or th <= height:
        return None
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    fx, fy = width / tw, height / th
    shrunk_w, shrunk_h = max(width, round((x1 - x0) * fx)), max(height, round((y1 - y0) * fy))
    return Shrink((x0, y0, x1, y1), shrunk_w, shrunk_h, fx, fy)


def cut(
    image: npt.NDArray[Any], boxes: list[Box], size: tuple[int, int], shared: bool = True
) -> npt.NDArray[np.float32]:
    """The model inputs for ``boxes``: (N, height, width, 1) float32, through the one preprocess.

    Tiles of one size that must be shrunk are cut from the region they cover, shrunk once to the scale
    of the model's input (``shrink_for``: a tile's pixels then come from one resize of the frame, not
    one resize per tile; 42 overlapping tiles are 1.8 times the frame's pixels), each tile a slice of it
    at its scaled place, rounded to the nearest pixel. Training cuts tiles through this same function.
    ``shared`` False: one resize per tile (the previous way, the benchmark's baseline)."""
    gray = to_gray(image)
    out = np.empty((len(boxes), *size, 1), np.float32)
    height, width = size
    plan = shrink_for(boxes, size) if shared else None
    if plan is not None:
        x0, y0, x1, y1 = plan.region
        shrunk = preprocess(gray[y0:y1, x0:x1], (plan.height, plan.width))
        for i, (x, y, _, _) in enumerate(boxes):
            left = min(round((x - x0) * plan.fx), plan.width - width)
            top = min(round((y - y0) * plan.fy), plan.height - height)
            out[i] = shrunk[top : top + height, left : left + width]
        return out
    for i, (x, y, w, h) in enumerate(boxes):
        out[i] = preprocess(gray[y : y + h, x : x + w], size)
    return out


def intersection(a: Box, b: Box) -> int:
    """Pixels the two boxes share."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy


def overlap_ratio(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area (a found tile "hits" a mark it contains)."""
    smaller = min(a[2] * a[3], b[2] * b[3])
    return intersection(a, b) / smaller if smaller else 0.0
