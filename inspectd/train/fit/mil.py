"""Fitting a MIL head on feature maps computed once, with bag targets (bags.py): where a composited mark
is, the head is told which of its places hold it. Each start warms up on every place (bags.place_loss),
then trains on the maximum. Optionally a second round on hard negatives."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inspectd.core import logs
from inspectd.core.retrain_config import RetrainConfig
from inspectd.train.fit import bags
from inspectd.train.fit.callbacks import (
    confusion_images,
    frame_auc,
    frame_logits,
    history_rows,
    schedule,
    validation_auc,
)
from inspectd.train.tf import keras, tensorflow

log = logs.get("inspectd.train.fit")
HARD_SHARE = 0.25  # the share of absent training frames mined as hard negatives
HARD_WEIGHT = 3.0


def fit_bags(
    head: Any,
    rc: RetrainConfig,
    f: npt.NDArray[np.float16],
    targets: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int_],
    fv: npt.NDArray[np.float32],
    yv: npt.NDArray[np.int_],
    run_dir: Path,
) -> int:
    """Fit a MIL head on feature maps with bag targets (inspectd/train/fit/bags.py), early stopping on the
    frame-level validation ROC-AUC; then, with ``retrain.hard_negative_epochs``, a second round in which
    the absent frames the model scores highest (look-alike marks, mostly) weigh ``HARD_WEIGHT`` times
    more. The second round is kept only if it does better on validation."""
    # long: the two rounds share the fit (a closure over the features); the second is a few lines
    tf = tensorflow()
    k = keras()
    logit_map = k.Model(head.input, head.get_layer("logit_map").output, name="logit_map")
    weights = bags.frame_weights(labels)

    def fit_round(
        weights: npt.NDArray[np.float32], learning_rate: float, epochs: int, first: int, warm_up: bool = False
    ) -> int:
        """``epochs`` of the MIL loss from epoch ``first``; with ``warm_up``, the start of a head: its
        ``warmup_epochs`` on every place first, and min_epochs counted from after them."""
        train = (
            tf.data.Dataset.from_tensor_slices((f, targets, weights))
            .shuffle(len(f), seed=rc.seed + first, reshuffle_each_iteration=True)
            .batch(rc.batch_size)
            .map(lambda a, t, w: (tf.cast(a, tf.float32), t, w))
            .prefetch(2)
        )
        logged = [
            frame_auc(head, fv, yv),
            k.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), histogram_freq=0),
            confusion_images(fv, yv, run_dir / "tensorboard", model=head),
            *history_rows(run_dir),
        ]
        if warm_up and rc.warmup_epochs:
            logit_map.compile(optimizer=k.optimizers.Adam(learning_rate), loss=bags.place_loss)
            history = logit_map.fit(
                train,
                epochs=first + rc.warmup_epochs,
                initial_epoch=first,
                shuffle=False,
                callbacks=logged,
                verbose=1 if sys.stdout.isatty() else 2,
            )
            first += len(history.history["loss"])
            # frame_auc put the last warm-up epoch's validation ROC-AUC into the history
            log.info(
                "head.warmed_up",
                epochs=rc.warmup_epochs,
                validation_roc_auc=round(history.history["val_auc"][-1], 4),
            )
        logit_map.compile(optimizer=k.optimizers.Adam(learning_rate), loss=bags.bag_loss)
        callbacks = [*logged[:1], *schedule(rc, first), *logged[1:]]
        history = logit_map.fit(
            train,
            epochs=first + epochs,
            initial_epoch=first,
            shuffle=False,  # the dataset shuffles itself each epoch
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )
        return first + len(history.history["loss"])

    epochs_run = fit_round(weights, rc.learning_rate, rc.epochs, 0, warm_up=True)
    best_auc, best = validation_auc(head, fv, yv), head.get_weights()
    for restart in range(1, rc.head_restarts):  # another start: keep the head validation ranks best
        k.utils.set_random_seed(rc.seed + restart)
        head.set_weights(k.models.clone_model(head).get_weights())  # fresh initial weights
        epochs_run = fit_round(weights, rc.learning_rate, rc.epochs, epochs_run, warm_up=True)
        auc = validation_auc(head, fv, yv)
        log.info("head.restarted", restart=restart, validation_roc_auc=round(auc, 4), best=round(best_auc, 4))
        if auc > best_auc:
            best_auc, best = auc, head.get_weights()
    head.set_weights(best)
    if not rc.hard_negative_epochs:
        return epochs_run
    first_auc, kept = best_auc, best  # the head as kept from its starts
    absent = np.flatnonzero(labels == 0)
    top = frame_logits(head, f[absent])
    hard = absent[top >= np.quantile(top, 1.0 - HARD_SHARE)]
    weights = weights.copy()
    weights[hard] *= HARD_WEIGHT
    log.info("hard_negatives.mined", frames=len(hard), of=len(absent), weight=HARD_WEIGHT)
    epochs_run = fit_round(weights, rc.learning_rate * 0.3, rc.hard_negative_epochs, epochs_run)
    second_auc = validation_auc(head, fv, yv)
    if second_auc < first_auc:
        head.set_weights(kept)
    log.info(
        "hard_negatives.done",
        validation_roc_auc_before=round(first_auc, 4),
        validation_roc_auc_after=round(second_auc, 4),
        kept=second_auc >= first_auc,
    )
    return epochs_run
