"""Teach by example (``retrain --symbol ART``): the mark's artwork composited into labeled absent images.

Each synthetic positive is a real absent training image with the mark drawn in at its own resolution,
before any resize (so the strokes are not smeared): a random size, rotation, shear and aspect, a stroke
made thicker or thinner, blur, a contrast and polarity of its own, the background showing through, part of
it occluded, noise on the ink. The mark is drawn at four times its size and reduced (anti-aliased edges).
Where it was put is known, so the trainer can say which places of the frame hold it (fit.bag_targets).
Only training images are used: validation, holdout and the gate stay real images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from inspectd.core.preprocess import preprocess, to_gray
from inspectd.core.records import Box
from inspectd.core.retrain_config import SymbolConfig
from inspectd.core.tiles import region
from inspectd.ops.labels import Labeled
from inspectd.train.data.geometry import gray8, read_image

SUPERSAMPLE = 4


class ArtworkError(ValueError):
    """The artwork file cannot be read, or shows no mark."""


@dataclass(frozen=True)
class Artwork:
    """The mark's coverage, 0 (background) to 1 (ink), cropped to the mark."""

    mask: npt.NDArray[np.float32]
    source: str


def load_artwork(path: Path) -> Artwork:
    """A PNG (or any image OpenCV reads): its alpha channel when it has one that varies, else its
    gray levels, the ink being the side of Otsu's threshold with fewer pixels (a dark mark on white or a
    light one on black alike); anti-aliased edges keep their partial coverage."""
    image = read_image(path)
    if image is None:
        raise ArtworkError(f"{path}: not a readable image")
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    if (
        image.ndim == 3
        and image.shape[2] == 4
        and int(image[:, :, 3].min()) < 128 <= int(image[:, :, 3].max())
    ):
        mask = image[:, :, 3].astype(np.float32) / 255.0
    else:
        gray = to_gray(image)
        _, binary = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        dark = int((binary == 0).sum()) <= int((binary > 0).sum())
        ink = gray[binary == 0] if dark else gray[binary > 0]
        paper = gray[binary > 0] if dark else gray[binary == 0]
        if ink.size == 0 or paper.size == 0:
            raise ArtworkError(f"{path}: a single gray level, no mark to find")
        lo, hi = float(np.median(ink)), float(np.median(paper))
        mask = np.clip((gray.astype(np.float32) - hi) / (lo - hi), 0.0, 1.0) if lo != hi else binary * 0.0
    ys, xs = np.nonzero(mask > 0.05)
    if len(xs) < 4:
        raise ArtworkError(f"{path}: no mark found (an empty or uniform image)")
    mask = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return Artwork(np.ascontiguousarray(mask, np.float32), str(path))


def _warp(art: Artwork, side: float, cfg: SymbolConfig, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """The mask at SUPERSAMPLE times ``side`` pixels (its longer side), turned, sheared, stretched, its
    strokes thickened or thinned; cropped to the ink."""
    mask = art.mask
    scale = SUPERSAMPLE * side / max(mask.shape)
    if scale < 1:  # reduced by area first: a warp that shrinks samples the strokes and drops thin ones
        reduced = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
        mask = np.asarray(cv2.resize(mask, reduced, interpolation=cv2.INTER_AREA), np.float32)
        scale = SUPERSAMPLE * side / max(mask.shape)
    h, w = mask.shape
    aspect = float(np.exp(rng.uniform(-np.log(1 + cfg.aspect), np.log(1 + cfg.aspect))))
    angle = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    shear = np.tan(np.deg2rad(rng.uniform(-cfg.shear_deg, cfg.shear_deg)))
    cos, sin = np.cos(angle), np.sin(angle)
    linear = (
        np.array([[cos, -sin], [sin, cos]])
        @ np.array([[1, shear], [0, 1]])
        @ np.diag([scale * aspect, scale / aspect])
    )
    corners = linear @ np.array([[0, w, w, 0], [0, 0, h, h]], float)
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    pad = 2 * SUPERSAMPLE + 2
    matrix = np.hstack([linear, (pad - lo)[:, None]])
    size = (int(np.ceil(hi[0] - lo[0])) + 2 * pad, int(np.ceil(hi[1] - lo[1])) + 2 * pad)
    out = cv2.warpAffine(mask, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
    stroke = round(rng.uniform(-cfg.stroke, cfg.stroke) * SUPERSAMPLE * side / 16)
    if stroke:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(stroke) + 1,) * 2)
        out = cv2.dilate(out, kernel) if stroke > 0 else cv2.erode(out, kernel)
    return np.asarray(out, np.float32)


def composite(
    background: npt.NDArray[np.uint8], art: Artwork, cfg: SymbolConfig, rng: np.random.Generator
) -> tuple[npt.NDArray[np.uint8], Box]:
    """``background`` (8-bit gray) with the mark drawn in somewhere, and the mark's box (x, y, w, h)."""
    height, width = background.shape
    short = min(height, width)
    lo, hi = cfg.size[0] * short, cfg.size[1] * short
    side = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    big = _warp(art, side, cfg, rng)
    if rng.random() < cfg.occlusion:  # a part of the mark hidden (dust, a scratch, the frame's edge)
        bh, bw = big.shape
        ch, cw = int(rng.uniform(0.1, 0.3) * bh), int(rng.uniform(0.1, 0.3) * bw)
        y0, x0 = int(rng.integers(0, bh - ch + 1)), int(rng.integers(0, bw - cw + 1))
        big[y0 : y0 + ch, x0 : x0 + cw] = 0.0
    small_size = (max(1, round(big.shape[1] / SUPERSAMPLE)), max(1, round(big.shape[0] / SUPERSAMPLE)))
    mask = cv2.resize(big, small_size, interpolation=cv2.INTER_AREA)
    blur = rng.uniform(0.0, cfg.blur_sigma)
    if blur > 0.3:
        mask = cv2.GaussianBlur(mask, (0, 0), blur)
    ys, xs = np.nonzero(mask > 0.1)
    if len(xs) == 0:  # thinned or hidden away entirely: draw it again, plainly
        if cfg.occlusion == 0.0 and cfg.stroke == 0.0:
            raise ArtworkError(f"{art.source}: its strokes vanish at {side:.0f} px; raise symbol.size")
        return composite(background, art, cfg.model_copy(update={"occlusion": 0.0, "stroke": 0.0}), rng)
    mask = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    mh, mw = mask.shape
    mh, mw = min(mh, height), min(mw, width)
    mask = mask[:mh, :mw]
    top, left = int(rng.integers(0, height - mh + 1)), int(rng.integers(0, width - mw + 1))
    patch = background[top : top + mh, left : left + mw].astype(np.float32)
    local = float(patch.mean())
    contrast = 255.0 * rng.uniform(*cfg.contrast)
    dark = rng.random() < cfg.dark_share
    if (dark and local - contrast < 0) or (not dark and local + contrast > 255):
        dark = not dark  # no room on that side of the background
    ink = np.clip(local - contrast if dark else local + contrast, 0, 255)
    opacity = rng.uniform(cfg.opacity, 1.0)
    weight = mask * opacity
    out = patch * (1.0 - weight) + ink * weight
    noise = rng.uniform(0.0, cfg.noise)
    if noise > 0:
        out += weight * rng.normal(0.0, 255.0 * noise, out.shape)
    result = background.copy()
    result[top : top + mh, left : left + mw] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return result, (left, top, mw, mh)


def synthesize(
    absent: Sequence[Labeled],
    art: Artwork,
    cfg: SymbolConfig,
    count: int,
    size: tuple[int, int],
    roi: tuple[float, float, float, float] | None,
    seed: int,
) -> Iterator[tuple[npt.NDArray[np.float32], Box]]:
    """``count`` model inputs (as preprocess makes them), each an absent image of ``absent`` (in turn)
    with the mark composited into its region of interest, and the mark's box in input pixels."""
    rng = np.random.default_rng(seed)
    frames = list(dict.fromkeys(item.path for item in absent))
    made, turn, unusable = 0, 0, 0
    while made < count and unusable < len(frames):  # stops when no frame at all can be read
        path = frames[turn % len(frames)]
        turn += 1
        gray = gray8(path)
        if gray is None:
            unusable += 1
            continue
        unusable = 0
        left, top, width, height = region(roi, gray.shape[1], gray.shape[0])
        crop = np.ascontiguousarray(gray[top : top + height, left : left + width])
        drawn, (bx, by, bw, bh) = composite(crop, art, cfg, rng)
        sy, sx = size[0] / height, size[1] / width
        x0, y0 = int(np.floor(bx * sx)), int(np.floor(by * sy))  # what the resize blends the mark into
        x1, y1 = int(np.ceil((bx + bw) * sx)), int(np.ceil((by + bh) * sy))
        box = (x0, y0, max(1, min(size[1], x1) - x0), max(1, min(size[0], y1) - y0))
        yield preprocess(drawn, size), box
        made += 1
