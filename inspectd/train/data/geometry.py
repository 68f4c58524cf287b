"""Geometric augmentation at the source resolution: each training frame turned, scaled, sheared and shifted
(``[retrain.augment]``) while it still has its own pixels, then reduced to the model's input exactly as the
daemon reduces a frame. Done after the resize, the same transforms interpolate a thin mark's strokes away
(at 128 px the bundled mark's lines are under a pixel wide); done here, they cost the mark nothing.

The copies are made once per retrain (``augment.source_copies`` of each training frame), beside the
frames themselves: the MIL head trains on feature maps computed once, so per-epoch transforms of the
inputs would not reach it anyway.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inspectd.core.preprocess import preprocess, to_gray
from inspectd.core.retrain_config import AugmentConfig
from inspectd.core.tiles import region
from inspectd.ops.labels import Labeled


def read_image(path: Path) -> npt.NDArray[Any] | None:
    """An image file decoded as it is (channels and depth kept), or None when it cannot be read or
    decoded (missing, unreadable, not an image, over OpenCV's own pixel limit). Training frames reach
    this only once the daemon's decode stage has accepted them (retrain passes only those)."""
    try:
        data = np.fromfile(path, np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except (OSError, cv2.error):
        return None
    return image


def gray8(path: Path) -> npt.NDArray[np.uint8] | None:
    """A frame as 8-bit grayscale (16-bit frames reduced), or None when it cannot be read."""
    image = read_image(path)
    if image is None:
        return None
    gray = to_gray(image)
    if gray.dtype == np.uint16:
        gray = (gray // 257).astype(np.uint8)
    return gray if gray.dtype == np.uint8 else None


def geometric(cfg: AugmentConfig) -> bool:
    return bool(cfg.rotation_deg or cfg.scale or cfg.shear_deg or cfg.translate)


def warp(gray: npt.NDArray[np.uint8], cfg: AugmentConfig, rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """One random transform of ``gray`` about its centre, the same size, edges mirrored in."""
    height, width = gray.shape
    angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
    scale = 1.0 + rng.uniform(-cfg.scale, cfg.scale)
    shear = np.tan(np.deg2rad(rng.uniform(-cfg.shear_deg, cfg.shear_deg)))
    shift = rng.uniform(-cfg.translate, cfg.translate, 2) * (width, height)
    centre = np.array([width / 2, height / 2])
    turn = cv2.getRotationMatrix2D((0.0, 0.0), angle, scale)[:, :2]
    linear = turn @ np.array([[1.0, shear], [0.0, 1.0]])
    offset = centre + shift - linear @ centre
    matrix = np.hstack([linear, offset[:, None]])
    out = cv2.warpAffine(
        gray, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    return np.asarray(out, np.uint8)


def source_copies(
    items: Sequence[Labeled],
    cfg: AugmentConfig,
    size: tuple[int, int],
    roi: tuple[float, float, float, float] | None,
    seed: int,
) -> Iterator[tuple[npt.NDArray[np.float32], int]]:
    """``cfg.source_copies`` transformed model inputs of each readable item, with its label."""
    rng = np.random.default_rng([seed, 17])
    for item in items:
        gray = gray8(item.path)
        if gray is None:
            continue
        left, top, width, height = region(roi, gray.shape[1], gray.shape[0])
        crop = np.ascontiguousarray(gray[top : top + height, left : left + width])
        for _ in range(cfg.source_copies):
            yield preprocess(warp(crop, cfg, rng), size), item.label
