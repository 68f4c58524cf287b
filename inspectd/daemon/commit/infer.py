"""Infer stage, as the commit runs it: one call for the batch's new images, image by image if it fails."""

from __future__ import annotations

import numpy as np

from inspectd.core import logs
from inspectd.core.records import Decoded, Rejected, Scored
from inspectd.model.active import ActiveModel

log = logs.get("inspectd.pipeline")


def classify(model: ActiveModel, fresh: list[Decoded]) -> tuple[dict[str, Scored], dict[str, Rejected]]:
    """Score the batch in one call; if that fails, score image by image so one bad input is recorded as
    its own error and the others still get their verdicts. A score that is not a number is an inference
    failure of that image, never a row. Both answers are keyed by content hash."""
    try:
        results = model.classify(fresh)
    except (RuntimeError, ValueError) as exc:
        log.error("infer.batch_failed", images=len(fresh), error=str(exc))
        results = [_classify_one(model, image) for image in fresh]
    scored: dict[str, Scored] = {}
    failed: dict[str, Rejected] = {}
    for result in results:
        if isinstance(result, Rejected):
            failed[result.sha256] = result
        elif np.isfinite(result.score):
            scored[result.image.sha256] = result
        else:
            failed[result.image.sha256] = inference_failed(
                result.image, f"the model gave a non-finite score ({result.score})"
            )
    return scored, failed


def _classify_one(model: ActiveModel, image: Decoded) -> Scored | Rejected:
    try:
        return model.classify([image])[0]
    except (RuntimeError, ValueError) as exc:
        return inference_failed(image, str(exc))


def inference_failed(image: Decoded, detail: str) -> Rejected:
    return Rejected(
        image.source, image.sha256, image.size_bytes, "inference_failed", detail, image.width, image.height
    )
