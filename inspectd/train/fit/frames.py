"""The training recipe: build a network, fit it (two phases for a pretrained backbone), and hand over
what conversion and calibration need. Calibration is not done here: it is fitted later, on the network
that ships (export.py), whose logits a quantized conversion changes."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inspectd.core import logs
from inspectd.core.records import Box
from inspectd.core.retrain_config import RetrainConfig
from inspectd.train.data import augment
from inspectd.train.fit import bags
from inspectd.train.fit.callbacks import confusion_images, history_rows, schedule
from inspectd.train.fit.mil import fit_bags
from inspectd.train.nets.backbones import Built, build, unfreeze_top
from inspectd.train.tf import keras, tensorflow

log = logs.get("inspectd.train.fit")


def _fit(
    model: Any,
    rc: RetrainConfig,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int_],
    xv: npt.NDArray[np.float32],
    yv: npt.NDArray[np.int_],
    run_dir: Path,
    learning_rate: float,
    epochs: int,
    initial_epoch: int,
) -> int:
    """Fit a network on images, through the [retrain.augment] pipeline."""
    tf = tensorflow()
    k = keras()
    aug = augment.pipeline(rc.augment, rc.seed)
    train = (
        tf.data.Dataset.from_tensor_slices((x, y.astype(np.float32)))
        .shuffle(len(x), seed=rc.seed, reshuffle_each_iteration=True)
        .batch(rc.batch_size)
    )
    if aug is not None:
        train = train.map(lambda a, b: (aug(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    train = train.prefetch(2)
    n, positives = len(y), int(y.sum())
    class_weight = {0: n / (2 * (n - positives)), 1: n / (2 * positives)}
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate),
        loss=k.losses.BinaryCrossentropy(from_logits=True),
        metrics=[
            k.metrics.AUC(from_logits=True, name="auc"),
            k.metrics.Precision(thresholds=0.0, name="precision"),
            k.metrics.Recall(thresholds=0.0, name="recall"),
        ],
    )
    callbacks = [
        *schedule(rc),
        k.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), histogram_freq=0),
        confusion_images(xv, yv, run_dir / "tensorboard"),
        *history_rows(run_dir),
    ]
    history = model.fit(
        train,
        validation_data=(xv, yv.astype(np.float32)),
        epochs=initial_epoch + epochs,
        initial_epoch=initial_epoch,
        class_weight=class_weight,
        shuffle=False,  # the dataset shuffles itself each epoch
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    return initial_epoch + len(history.history["loss"])


LogitFn = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]
REPRESENTATIVE = 256  # training inputs that set an int8 network's activation ranges


@dataclass(frozen=True)
class Trained:
    model: Any
    weights: str  # where the backbone's starting weights came from
    epochs_run: int
    check_x: npt.NDArray[np.float32]  # labeled validation inputs the conversion is checked on
    check_y: npt.NDArray[np.int_]
    representative: npt.NDArray[np.float32]  # training inputs for int8 activation ranges
    samples: npt.NDArray[np.float32]  # model inputs for the version's self-test
    # per-frame validation logits and labels of a network (the Keras one, or the converted one):
    # calibration and the threshold are fitted on them
    frames: Callable[[LogitFn], tuple[npt.NDArray[np.float32], npt.NDArray[np.int_]]]


def representative(x: npt.NDArray[np.float32], seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(len(x), size=min(REPRESENTATIVE, len(x)), replace=False))]


def train_arrays(
    rc: RetrainConfig,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int_],
    xv: npt.NDArray[np.float32],
    yv: npt.NDArray[np.int_],
    run_dir: Path,
    model: Any | None = None,
    synthetic: tuple[npt.NDArray[np.float32], Sequence[Box]] | None = None,
) -> Trained:
    """The training recipe itself: build, fit (two phases for a pretrained backbone). ``model``: go on
    training that one instead of building a new one. ``synthetic``: more present inputs and their marks'
    boxes (composited artwork). Calibration comes later, on the converted network."""
    xs = synthetic[0] if synthetic is not None else x[:0]
    if model is not None:
        built = Built(model, None, "continued")
    else:
        built = build(rc.backbone, rc.input_size, rc.pretrained, rc.weights.get(rc.backbone), rc.head)
    if built.head is not None and built.preprocess is not None:
        epochs_run = _fit_mil_head(built, rc, x, y, xv, yv, synthetic, run_dir)
    else:
        if len(xs):  # no places to tell the mark's from: the composited frames are present frames
            x, y = np.concatenate([x, xs]), np.concatenate([y, np.ones(len(xs), np.int_)])
        epochs_run = _fit(built.model, rc, x, y, xv, yv, run_dir, rc.learning_rate, rc.epochs, 0)
    if built.base is not None and rc.fine_tune:
        trainable = unfreeze_top(built.base, rc.fine_tune_layers)
        log.info("fine_tune.start", trainable_layers=trainable)
        epochs_run = _fit(
            built.model,
            rc,
            x,
            y,
            xv,
            yv,
            run_dir,
            rc.fine_tune_learning_rate,
            rc.fine_tune,
            epochs_run,
        )
    return Trained(
        built.model,
        built.weights,
        epochs_run,
        xv,
        yv,
        representative(x, rc.seed),
        xv[:8],
        lambda logits: (logits(xv), yv),
    )


def _fit_mil_head(
    built: Built,
    rc: RetrainConfig,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int_],
    xv: npt.NDArray[np.float32],
    yv: npt.NDArray[np.int_],
    synthetic: tuple[npt.NDArray[np.float32], Sequence[Box]] | None,
    run_dir: Path,
) -> int:
    """Phase one of the MIL recipe: the base is frozen, so its feature maps are computed once (the
    training images and their mirror images, the lossless part of the augmentation, and the composites)
    and the head trains on them with bag targets. Returns the epochs run."""
    assert built.head is not None and built.preprocess is not None
    xs, boxes_s = synthetic if synthetic is not None else (x[:0], [])
    started = time.monotonic()
    copies = MIRRORS if rc.augment.flip else MIRRORS[:1]
    fv = feature_maps(built.preprocess, xv)
    grid = (int(fv.shape[1]), int(fv.shape[2]))
    stride = x.shape[1] / grid[0]
    real = bags.bag_targets(y, [None] * len(y), grid, stride)  # real frames: no boxes
    f = np.concatenate(  # float16: half the memory; the head reads them as float32
        [feature_maps(built.preprocess, mirror(x)).astype(np.float16) for mirror in copies]
        + [feature_maps(built.preprocess, xs).astype(np.float16)]
    )
    t = np.concatenate(
        [mirror(real) for mirror in copies]
        + [bags.bag_targets(np.ones(len(xs), np.int_), boxes_s, grid, stride)]
    )
    fy = np.concatenate([np.tile(y, len(copies)), np.ones(len(xs), np.int_)])
    log.info(
        "features.ready",
        maps=len(f),
        synthetic=len(xs),
        shape=list(f.shape[1:]),
        seconds=round(time.monotonic() - started, 1),
    )
    return fit_bags(built.head, rc, f, t, fy, fv, yv, run_dir)


Mirror = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]
MIRRORS: tuple[Mirror, ...] = (
    lambda a: a,
    lambda a: np.ascontiguousarray(a[:, :, ::-1]),
    lambda a: np.ascontiguousarray(a[:, ::-1]),
    lambda a: np.ascontiguousarray(a[:, ::-1, ::-1]),
)


def feature_maps(extractor: Any, x: npt.NDArray[np.float32], batch: int = 32) -> npt.NDArray[np.float32]:
    """A frozen extractor's outputs for ``x``, a batch at a time (inference mode)."""
    tf = tensorflow()
    run = tf.function(lambda a: extractor(a, training=False), reduce_retracing=True)
    parts = [np.asarray(run(x[i : i + batch]), np.float32) for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, *extractor.output.shape[1:]), np.float32)


def keras_logits(model: Any) -> LogitFn:
    def run(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.asarray(model.predict(x, batch_size=128, verbose=0), np.float32).reshape(-1)

    return run
