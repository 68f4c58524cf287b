"""Tiled training (``[retrain] tile``): the model learns on tiles cut exactly as the daemon cuts frames.

Examples per labeled frame, through the daemon's decode stage and inspectd/core/tiles.py:
- a frame labeled absent: ``negatives_per_frame`` of its tiles, at random, are negatives;
- a frame labeled present with a box (``x,y,w,h``: CSV import columns, ``inspectd label --box``): the
  tiles holding most of the box are positives, a few tiles clear of it are negatives;
- a frame labeled present without a box, multiple-instance style (the frame is positive if any tile is):
  once a first model has learned from the boxed frames, its best-scoring tile of each such frame becomes
  a positive and training goes on. Tiled training therefore needs some boxed positives to start from.

Calibration and the threshold are then fitted per frame (the highest tile logit of each validation
frame), since the daemon decides per frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from inspectd.core import logs
from inspectd.core.records import Decoded
from inspectd.core.retrain_config import RetrainConfig
from inspectd.core.tiles import View, intersection
from inspectd.daemon.intake.decode import DecodeLimits
from inspectd.ops.labels import Labeled
from inspectd.train.data.dataset import NotEnoughLabels, decoded_items
from inspectd.train.fit.frames import LogitFn, Trained, keras_logits, train_arrays

log = logs.get("inspectd.train.tiled")

POSITIVE_COVER = 0.6  # a tile holding this share of the box is a positive
NEGATIVES_PER_FRAME = 6
MIN_BOXED = 4


def _select(
    decoded: Decoded, item: Labeled, negatives: int, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """(positive tile indices, negative tile indices) of one frame."""
    n = len(decoded.boxes)
    if item.label == 0:
        return [], sorted(rng.choice(n, size=min(negatives, n), replace=False).tolist())
    if item.box is None:
        return [], []
    inside = [intersection(tile, item.box) for tile in decoded.boxes]
    need = POSITIVE_COVER * item.box[2] * item.box[3]
    positives = [i for i, v in enumerate(inside) if v >= need] or [int(np.argmax(inside))]
    clear = [i for i, v in enumerate(inside) if v == 0]
    picked: list[int] = (
        rng.choice(len(clear), size=min(negatives // 2, len(clear)), replace=False).tolist() if clear else []
    )
    return positives, sorted(clear[i] for i in picked)


def tile_examples(
    items: Sequence[Labeled], view: View, limits: DecodeLimits, seed: int, workers: int = 4
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int_], list[Labeled]]:
    """Tiles as training examples, and the present frames without a box (left for pseudo-labels)."""
    rng = np.random.default_rng(seed)
    xs: list[npt.NDArray[np.float32]] = []
    ys: list[int] = []
    unboxed: list[Labeled] = []
    for decoded, item in decoded_items(items, view, limits, 32, workers):
        if item.label == 1 and item.box is None:
            unboxed.append(item)
            continue
        positives, negatives = _select(decoded, item, NEGATIVES_PER_FRAME, rng)
        for index, label in [(i, 1) for i in positives] + [(i, 0) for i in negatives]:
            xs.append(decoded.tiles[index])
            ys.append(label)
    x = np.stack(xs) if xs else np.zeros((0, *view.input_size, 1), np.float32)
    return x, np.array(ys, np.int_), unboxed


def frame_logits(
    logits: LogitFn, items: Sequence[Labeled], view: View, limits: DecodeLimits, workers: int = 4
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int_], npt.NDArray[np.float32]]:
    """For each frame: its highest tile logit (by ``logits``, a network), its label, and that best tile."""
    best_logit: list[float] = []
    labels: list[int] = []
    best_tile: list[npt.NDArray[np.float32]] = []
    for decoded, item in decoded_items(items, view, limits, 8, workers):
        tile_logits = logits(decoded.tiles)
        best = int(np.argmax(tile_logits))
        best_logit.append(float(tile_logits[best]))
        labels.append(item.label)
        best_tile.append(decoded.tiles[best])
    tiles = np.stack(best_tile) if best_tile else np.zeros((0, *view.input_size, 1), np.float32)
    return np.array(best_logit, np.float32), np.array(labels, np.int_), tiles


def train_tiled(
    rc: RetrainConfig,
    roi: tuple[float, float, float, float] | None,
    train: Sequence[Labeled],
    validation: Sequence[Labeled],
    limits: DecodeLimits,
    run_dir: Path,
) -> Trained:
    """Trained on tiles; its ``frames`` give per-frame validation logits (calibration and the threshold
    are per frame)."""
    assert rc.tile is not None
    view = View((rc.input_size, rc.input_size), roi, rc.tile, rc.tile_overlap)
    x, y, unboxed = tile_examples(train, view, limits, rc.seed)
    xv, yv, _ = tile_examples(validation, view, limits, rc.seed + 1)
    boxed = int(y.sum())
    log.info("tiles.ready", train_tiles=len(y), positive_tiles=boxed, unboxed_frames=len(unboxed))
    if boxed < MIN_BOXED or int(yv.sum()) == 0:
        raise NotEnoughLabels(
            f"tiled training needs present labels with a box (x,y,w,h) in the train and validation splits "
            f"to start from: {boxed} positive tiles in train, {int(yv.sum())} in validation. Import a CSV "
            "with x,y,w,h columns, or label with --box"
        )
    trained = train_arrays(rc, x, y, xv, yv, run_dir)
    epochs = trained.epochs_run
    if unboxed:  # multiple-instance step: each unboxed present frame's best tile becomes a positive
        _, _, tiles = frame_logits(keras_logits(trained.model), unboxed, view, limits)
        log.info("tiles.pseudo_labeled", frames=len(tiles))
        again = rc.model_copy(update={"epochs": max(2, rc.epochs // 3)})
        x = np.concatenate([x, tiles])
        y = np.concatenate([y, np.ones(len(tiles), np.int_)])
        trained = train_arrays(again, x, y, xv, yv, run_dir, model=trained.model)
        epochs += trained.epochs_run

    def frames(logits: LogitFn) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int_]]:
        frame, labels, _ = frame_logits(logits, validation, view, limits)
        return frame, labels

    return replace(trained, epochs_run=epochs, frames=frames)
