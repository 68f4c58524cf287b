"""Export a trained Keras model as a registry version: LiteRT flatbuffer, metadata, self-test.

Conversion goes through a SavedModel (the path that gave correct outputs here). The float conversion must
reproduce the Keras model's logits on the validation inputs. A quantized one (``[retrain] quantize``:
``dynamic`` stores weights in int8; ``int8`` also runs activations in int8, their ranges measured on
training inputs) ships only if it keeps the float network's ROC-AUC on the validation inputs within
``MAX_AUC_DROP``; otherwise the float network ships and the metadata says why. Calibration, threshold,
self-test and the gate are then computed on the network that ships, through LiteRT, as the daemon runs it.
A quantized network ships with its float one beside it when their calibrated scores agree on the
self-test inputs (model/choice.py: each CPU runs the faster of the two).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inspectd.core import logs
from inspectd.core.registry import (
    FLOAT_MODEL_FILE,
    MODEL_FILE,
    SELFTEST_FILE,
    Calibration,
    ModelMeta,
    Quantize,
    Tiling,
    file_sha256,
    write_meta,
)
from inspectd.model.choice import AGREEMENT_TOLERANCE
from inspectd.model.runtime import Inferencer, Runner, sigmoid
from inspectd.train.tf import tensorflow

log = logs.get("inspectd.train.export")

CONVERSION_TOLERANCE = 1e-3  # float network: largest logit difference from Keras
MAX_AUC_DROP = 0.005  # quantized network: largest loss of validation ROC-AUC against the float one


class ExportError(Exception):
    """The converted model does not reproduce the Keras model."""


@dataclass(frozen=True)
class Converted:
    content: bytes
    input_size: tuple[int, int]
    quantization: Quantize  # what ships, which is "none" when the quantized network was refused
    fidelity: dict[str, Any]  # how the shipped network compares with Keras (kept in the metadata)
    floating: bytes | None = None  # a quantized network's float one, shipped beside it (model/choice.py)

    @cached_property
    def runner(self) -> Runner:
        return Runner(self.content, self.input_size, num_threads=0)

    def logits(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.runner.logits(x)


def _flatbuffer(saved: Path, quantize: Quantize, representative: npt.NDArray[np.float32]) -> bytes:
    tf = tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        converter.representative_dataset = lambda: ([x[np.newaxis]] for x in representative)
    return bytes(converter.convert())


def _auc(labels: npt.NDArray[np.int_], logits: npt.NDArray[np.float32]) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, logits)) if len(set(labels.tolist())) == 2 else None


def convert(
    model: Any,
    input_size: tuple[int, int],
    quantize: Quantize,
    representative: npt.NDArray[np.float32],
    check_x: npt.NDArray[np.float32],
    check_y: npt.NDArray[np.int_],
    max_auc_drop: float = MAX_AUC_DROP,
) -> Converted:
    """The LiteRT network to ship. ``representative``: training inputs (int8 activation ranges);
    ``check_x``/``check_y``: labeled validation inputs the conversion is checked on."""
    keras_logits = np.asarray(model.predict(check_x, batch_size=128, verbose=0), np.float32).reshape(-1)
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        floating = Converted(_flatbuffer(saved, "none", representative), input_size, "none", {})
        float_logits = floating.logits(check_x)
        worst = float(np.max(np.abs(float_logits - keras_logits))) if len(check_x) else 0.0
        if not np.all(np.isfinite(float_logits)) or worst > CONVERSION_TOLERANCE:
            raise ExportError(f"converted model differs from Keras by up to {worst:.5f} in logits")
        fidelity: dict[str, Any] = {
            "checked_on": len(check_x),
            "float_max_logit_difference": worst,
            "float_auc": _auc(check_y, float_logits),
        }
        if quantize == "none":
            return Converted(floating.content, input_size, "none", fidelity)
        # int8 first; when it loses ranking, int8 weights with float activations, then float. Each is
        # converted only when the one before it was refused.
        modes: list[Quantize] = [quantize, "dynamic"] if quantize == "int8" else [quantize]
        refusals: list[str] = []
        float_auc = fidelity["float_auc"]
        for mode in modes:
            content = _flatbuffer(saved, mode, representative)
            q_logits = Converted(content, input_size, mode, {}).logits(check_x)
            q_auc = _auc(check_y, q_logits)
            drop = float_auc - q_auc if float_auc is not None and q_auc is not None else 0.0
            if not np.all(np.isfinite(q_logits)) or drop > max_auc_drop:
                refusals.append(f"{mode} quantization lost {drop:.4f} of validation ROC-AUC")
                log.warning("quantize.refused", mode=mode, auc_drop=round(drop, 5), max_drop=max_auc_drop)
                continue
            fidelity.update(quantized_auc=q_auc, quantized_size_bytes=len(content))
            if refusals:
                fidelity["refused"] = "; ".join(refusals)
            log.info("quantize.accepted", mode=mode, auc_drop=round(drop, 5), size_bytes=len(content))
            return Converted(content, input_size, mode, fidelity, floating.content)
    fidelity["refused"] = "; ".join(refusals)
    return Converted(floating.content, input_size, "none", fidelity)


def export_version(
    converted: Converted,
    out: Path,
    version: str,
    threshold: float,
    calibration: tuple[float, float],
    selftest_inputs: npt.NDArray[np.float32],
    metrics: dict[str, Any],
    training: dict[str, Any],
    tiling: Tiling | None = None,
) -> ModelMeta:
    """Write ``out`` as a complete registry version and return its metadata."""
    out.mkdir(parents=True, exist_ok=False)
    (out / MODEL_FILE).write_bytes(converted.content)
    quantised = np.clip(np.rint(selftest_inputs[..., 0] * 255.0), 0, 255).astype(np.uint8)
    inputs = quantised.astype(np.float32)[..., np.newaxis] / 255.0
    a, b = calibration
    expected = sigmoid(np.float32(a) * converted.logits(inputs) + np.float32(b))
    recorded = {"inputs": quantised, "scores": expected}
    fidelity = dict(converted.fidelity)
    float_sha256 = None
    if converted.floating is not None:
        runner = Runner(converted.floating, converted.input_size, num_threads=0)
        scores_float = sigmoid(np.float32(a) * runner.logits(inputs) + np.float32(b))
        disagreement = float(np.max(np.abs(scores_float - expected))) if len(inputs) else 0.0
        fidelity["float_score_disagreement"] = disagreement
        if disagreement <= AGREEMENT_TOLERANCE:  # else the quantized network alone ships
            (out / FLOAT_MODEL_FILE).write_bytes(converted.floating)
            float_sha256 = file_sha256(out / FLOAT_MODEL_FILE)
            recorded["scores_float"] = scores_float
        else:
            log.warning("export.float_network_dropped", disagreement=round(disagreement, 4))
    np.savez_compressed(out / SELFTEST_FILE, **recorded)
    meta = ModelMeta(
        version=version,
        input_size=converted.input_size,
        threshold=threshold,
        calibration=Calibration(a=a, b=b),
        tiling=tiling,
        quantization=converted.quantization,
        created_at=datetime.now(UTC),
        model_sha256=file_sha256(out / MODEL_FILE),
        float_model_sha256=float_sha256,
        metrics=metrics,
        training={**training, "conversion": fidelity},
    )
    write_meta(out, meta)
    Inferencer.load(out, num_threads=1)  # exactly what the daemon will do
    return meta
