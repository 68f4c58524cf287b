"""What the network trains on: the input size, the training frames (with their geometric copies at the
source resolution and the artwork's composites), or the tiles of a tiled recipe; then the fit."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from inspectd.core import logs
from inspectd.core.records import Box
from inspectd.core.retrain_config import RetrainConfig
from inspectd.core.tiles import View, region
from inspectd.daemon.intake.decode import DecodeLimits
from inspectd.ops import labels
from inspectd.train.data.composite import Artwork, synthesize
from inspectd.train.data.dataset import Split, load
from inspectd.train.data.geometry import geometric, source_copies
from inspectd.train.fit.frames import Trained, train_arrays
from inspectd.train.fit.tiled import train_tiled
from inspectd.train.progress import progress

log = logs.get("inspectd.retrain")

Roi = tuple[float, float, float, float] | None

AUTO_INPUT_MAX = 256  # retrain.input_size = 0: at most this many pixels per side


def auto_input_size(items: list[labels.Labeled], tile: int | None, roi: Roi) -> int:
    """``retrain.input_size = 0``: the input that keeps the symbol's pixels where the cost allows. Tiles
    are seen at their own resolution (up to AUTO_INPUT_MAX); whole frames (or the ROI) at the median
    longer side of the labeled images, rounded up to a multiple of 16 (the MIL network's stride), at
    most AUTO_INPUT_MAX: a 256 px frame is not resized at all."""
    from PIL import Image

    if tile is not None:
        side = tile
    else:
        sides = []
        for item in items[:200]:  # the headers only
            try:
                with Image.open(item.path) as image:
                    width, height = image.size
            except (OSError, ValueError):
                continue
            if roi is not None:
                box = region(roi, width, height)
                width, height = box[2], box[3]
            sides.append(max(width, height))
        side = int(np.median(sides)) if sides else AUTO_INPUT_MAX
    return int(min(AUTO_INPUT_MAX, max(32, -(-side // 16) * 16)))


def train_on(
    rc: RetrainConfig, roi: Roi, parts: Split, art: Artwork | None, limits: DecodeLimits, run_dir: Path
) -> Trained:
    """Fit the recipe on the training split (validation split for early stopping and the threshold)."""
    if rc.tile is not None:
        return train_tiled(rc, roi, parts.train, parts.validation, limits, run_dir)
    size = (rc.input_size, rc.input_size)
    view = View(size, roi)
    # the frames the decode stage accepted (its pixel, size and ROI limits): the geometric copies and the
    # composites are made from them alone, re-read at their source resolution
    x, y, decodable = load(parts.train, view, limits)
    if geometric(rc.augment) and rc.augment.source_copies:
        x, y = _with_source_copies(rc, decodable, x, y, size, roi)
    xv, yv, _ = load(parts.validation, view, limits)
    synthetic = None
    if art is not None:  # into the training split's absent images only
        synthetic = _synthesize(rc, art, [i for i in decodable if i.label == 0], size, roi)
    return train_arrays(rc, x, y, xv, yv, run_dir, synthetic=synthetic)


def _with_source_copies(
    rc: RetrainConfig,
    train: list[labels.Labeled],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int_],
    size: tuple[int, int],
    roi: Roi,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int_]]:
    """The training frames and their geometric copies, made at the source resolution (geometry.py)."""
    started = time.monotonic()
    total = len(train) * rc.augment.source_copies
    made = list(progress(source_copies(train, rc.augment, size, roi, rc.seed), "augmenting", total))
    log.info("augment.source_copies", images=len(made), seconds=round(time.monotonic() - started, 1))
    if not made:
        return x, y
    return (
        np.concatenate([x, np.stack([image for image, _ in made])]),
        np.concatenate([y, np.array([label for _, label in made], np.int_)]),
    )


def _synthesize(
    rc: RetrainConfig,
    art: Artwork,
    absent: list[labels.Labeled],
    size: tuple[int, int],
    roi: Roi,
) -> tuple[npt.NDArray[np.float32], list[Box]]:
    started = time.monotonic()
    x = np.zeros((rc.symbol.count, *size, 1), np.float32)
    boxes: list[Box] = []
    made = synthesize(absent, art, rc.symbol, rc.symbol.count, size, roi, rc.seed)
    for i, (image, box) in enumerate(progress(made, "compositing", rc.symbol.count)):
        x[i] = image
        boxes.append(box)
    log.info(
        "symbol.composited",
        artwork=art.source,
        images=len(boxes),
        backgrounds=len(absent),
        seconds=round(time.monotonic() - started, 1),
    )
    return x[: len(boxes)], boxes
