"""Export a trained Keras model as a registry version: LiteRT flatbuffer, metadata, self-test.

The conversion goes through a SavedModel (the path that gave correct outputs here), and the converted
model's logits are compared with the Keras model's on real inputs before anything is written.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inspectd.infer import Inferencer, sigmoid
from inspectd.registry import (
    MODEL_FILE,
    SELFTEST_FILE,
    Calibration,
    ModelMeta,
    Tiling,
    file_sha256,
    write_meta,
)
from inspectd.train.tf import tensorflow

CONVERSION_TOLERANCE = 1e-3


class ExportError(Exception):
    """The converted model does not reproduce the Keras model."""


def to_tflite(model: Any) -> bytes:
    tf = tensorflow()
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        return bytes(converter.convert())


def export_version(
    model: Any,
    out: Path,
    version: str,
    input_size: tuple[int, int],
    threshold: float,
    calibration: tuple[float, float],
    selftest_inputs: npt.NDArray[np.float32],
    metrics: dict[str, Any],
    training: dict[str, Any],
    tiling: Tiling | None = None,
) -> ModelMeta:
    """Write ``out`` as a complete registry version and return its metadata."""
    content = to_tflite(model)
    out.mkdir(parents=True, exist_ok=False)
    (out / MODEL_FILE).write_bytes(content)
    quantised = np.clip(np.rint(selftest_inputs[..., 0] * 255.0), 0, 255).astype(np.uint8)
    inputs = quantised.astype(np.float32)[..., np.newaxis] / 255.0
    keras_logits = np.asarray(model(inputs, training=False), np.float32).reshape(-1)
    a, b = calibration
    expected = sigmoid(np.float32(a) * keras_logits + np.float32(b))
    np.savez_compressed(out / SELFTEST_FILE, inputs=quantised, scores=expected)
    meta = ModelMeta(
        version=version,
        input_size=input_size,
        threshold=threshold,
        calibration=Calibration(a=a, b=b),
        tiling=tiling,
        created_at=datetime.now(UTC),
        model_sha256=file_sha256(out / MODEL_FILE),
        metrics=metrics,
        training=training,
    )
    write_meta(out, meta)
    lite = Inferencer(meta, content, num_threads=1).logits(inputs)
    worst = float(np.max(np.abs(lite - keras_logits)))
    if not np.all(np.isfinite(lite)) or worst > CONVERSION_TOLERANCE:
        raise ExportError(f"converted model differs from Keras by up to {worst:.5f} in logits")
    Inferencer.load(out, num_threads=1)  # exactly what the daemon will do
    return meta
