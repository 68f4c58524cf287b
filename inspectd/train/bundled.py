"""The recipe that produced the bundled default model (reproducible from a seed, no download)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspectd.core.registry import ModelMeta, Quantize
from inspectd.model.runtime import Runner, sigmoid
from inspectd.ops.synth import SynthSpec
from inspectd.train.convert import convert, export_version
from inspectd.train.data.arrays import synthetic_arrays
from inspectd.train.evaluate import report
from inspectd.train.evaluate.metrics import binary_metrics
from inspectd.train.fit.frames import representative
from inspectd.train.nets.small import small_cnn
from inspectd.train.tf import keras, tensorflow


@dataclass(frozen=True)
class Recipe:
    input_size: tuple[int, int] = (128, 128)
    train: int = 3000
    validation: int = 800
    holdout: int = 1000
    epochs: int = 20
    batch: int = 64
    learning_rate: float = 2e-3
    seed: int = 7
    quantize: Quantize = "int8"


def build(out: Path, version: str, recipe: Recipe, log: Any = print) -> ModelMeta:
    tf = tensorflow()
    k = keras()
    k.utils.set_random_seed(recipe.seed)
    spec = SynthSpec()
    started = time.monotonic()
    x_train, y_train = synthetic_arrays(recipe.train, recipe.seed, spec, recipe.input_size)
    x_val, y_val = synthetic_arrays(recipe.validation, recipe.seed + 1, spec, recipe.input_size)
    x_hold, y_hold = synthetic_arrays(recipe.holdout, recipe.seed + 2, spec, recipe.input_size)
    log(f"generated {len(y_train)}/{len(y_val)}/{len(y_hold)} images in {time.monotonic() - started:.0f}s")
    model = small_cnn(recipe.input_size)
    model.compile(
        optimizer=k.optimizers.Adam(recipe.learning_rate),
        loss=k.losses.BinaryCrossentropy(from_logits=True),
        metrics=[k.metrics.AUC(from_logits=True, name="auc")],
    )
    stop = k.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=6, restore_best_weights=True)
    schedule = k.callbacks.ReduceLROnPlateau(monitor="val_auc", mode="max", factor=0.3, patience=3)
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=recipe.epochs,
        batch_size=recipe.batch,
        callbacks=[stop, schedule],
        verbose=2,
    )
    sample = representative(x_train, recipe.seed)
    converted = convert(model, recipe.input_size, recipe.quantize, sample, x_val, y_val)
    (a, b), threshold = report.calibrate(y_val, converted.logits(x_val), "best_f1", 1.0)
    hold_scores = sigmoid(np.float32(a) * converted.logits(x_hold) + np.float32(b))
    metrics = {"holdout": binary_metrics(y_hold, hold_scores, threshold)}
    if converted.floating is not None:  # shipped beside the quantized network: measured the same way
        floating = Runner(converted.floating, recipe.input_size, num_threads=0)
        float_scores = sigmoid(np.float32(a) * floating.logits(x_hold) + np.float32(b))
        metrics["holdout_float"] = binary_metrics(y_hold, float_scores, threshold)
    training = {
        "recipe": asdict(recipe),
        "synth": asdict(spec),
        "epochs_run": len(history.history["loss"]),
        "seconds": round(time.monotonic() - started, 1),
        "tensorflow": tf.__version__,
        "parameters": int(model.count_params()),
    }
    return export_version(converted, out, version, threshold, (a, b), x_hold[:8], metrics, training)
