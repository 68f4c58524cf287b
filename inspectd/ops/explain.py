"""`inspectd explain`: a picture an operator can look at — the frame, the tile-score heatmap, the region
of interest, and the box where the model found the symbol (its best tile), with the verdict.

The scores are the model's own, through the daemon's decode stage and LiteRT: what the picture shows is
what the daemon decided. OpenCV only; TensorFlow is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inspectd.core.preprocess import to_gray
from inspectd.core.records import Box, Decoded, ReadyFile, Verdict
from inspectd.core.tiles import region
from inspectd.daemon.intake.decode import DecodeLimits, decode
from inspectd.model.active import ActiveModel

MAX_SIDE = 1280  # the picture is scaled down to at most this many pixels per side


class ExplainError(Exception):
    """The file cannot be explained (unreadable, not an image)."""


@dataclass(frozen=True, slots=True)
class Explanation:
    score: float
    verdict: str
    threshold: float
    box: Box | None
    tiles: int
    picture: Path


def to_8bit(image: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """An image to look at: 8-bit as it is, deeper ones scaled so their brightest pixel is 255."""
    if image.dtype == np.uint8:
        return image
    return np.asarray(cv2.convertScaleAbs(image, alpha=255.0 / float(max(1, int(image.max())))), np.uint8)


def heatmap(
    width: int, height: int, boxes: tuple[Box, ...], scores: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Each pixel: the highest score among the tiles covering it (0 outside every tile)."""
    heat = np.zeros((height, width), np.float32)
    for (x, y, w, h), score in zip(boxes, scores, strict=True):
        np.maximum(heat[y : y + h, x : x + w], score, out=heat[y : y + h, x : x + w])
    return heat


def explain(path: Path, model: ActiveModel, limits: DecodeLimits, out: Path) -> Explanation:
    """The picture of ``path`` as ``model`` sees it on this station, written to ``out``."""
    view = model.view
    roi = view.roi
    decoded = decode(ReadyFile(path, 0.0, datetime.now(UTC)), limits, view)
    if not isinstance(decoded, Decoded):
        reason = getattr(decoded, "detail", "the file disappeared")
        raise ExplainError(f"{path}: {reason}")
    frame = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if frame is None:  # decoded a moment ago: replaced meanwhile
        raise ExplainError(f"{path}: no longer decodable")
    gray = to_8bit(to_gray(frame))
    tile_scores = model.runtime.scores(decoded.tiles)
    scored = model.runtime.decide(decoded, tile_scores, model.cfg.threshold, model.cfg.tile_reduce)
    heat = heatmap(decoded.width, decoded.height, decoded.boxes, tile_scores)
    picture = _draw(
        gray, heat, decoded, scored.score, scored.verdict.value, scored.threshold, scored.box, roi
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), picture):
        raise ExplainError(f"cannot write {out}")
    return Explanation(
        scored.score, scored.verdict.value, scored.threshold, scored.box, len(decoded.boxes), out
    )


def _draw(
    gray: npt.NDArray[np.uint8],
    heat: npt.NDArray[np.float32],
    decoded: Decoded,
    score: float,
    verdict: str,
    threshold: float,
    box: Box | None,
    roi: tuple[float, float, float, float] | None,
) -> npt.NDArray[np.uint8]:
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    colours = cv2.applyColorMap(np.clip(heat * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (0.15 + 0.45 * heat)[..., np.newaxis]
    picture = (base * (1.0 - alpha) + colours * alpha).astype(np.uint8)
    if roi is not None:
        x, y, w, h = region(roi, decoded.width, decoded.height)
        cv2.rectangle(picture, (x, y), (x + w - 1, y + h - 1), (255, 255, 0), 2)
    found = verdict == Verdict.PRESENT
    if box is not None:
        x, y, w, h = box
        colour = (0, 0, 255) if found else (0, 200, 0)
        cv2.rectangle(picture, (x, y), (x + w - 1, y + h - 1), colour, 3)
    scale = min(1.0, MAX_SIDE / max(picture.shape[:2]))
    if scale < 1.0:
        picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    text = f"{verdict}  score {score:.3f}  threshold {threshold:.3f}  tiles {len(decoded.boxes)}"
    cv2.rectangle(picture, (0, 0), (picture.shape[1], 28), (0, 0, 0), -1)
    cv2.putText(picture, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return np.asarray(picture, np.uint8)


def default_out(runs: Path, path: Path) -> Path:
    return runs / "explain" / f"{path.stem}.explain.png"
