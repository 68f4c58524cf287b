"""The pipeline's scoring step in process: a score that is not a number is an error of that image."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from inspectd.config import ModelConfig
from inspectd.decode import DecodeLimits, decode_closed
from inspectd.infer import Inferencer
from inspectd.metrics import Metrics
from inspectd.persist import Store
from inspectd.pipeline import Destinations, Pipeline
from inspectd.records import Decoded, ReadyFile
from inspectd.registry import bundled_model_dir
from inspectd.tiles import view_for
from tests.conftest import png_bytes


def test_non_finite_scores_are_inference_failures(tmp_path: Path) -> None:
    inferencer = Inferencer.load(bundled_model_dir(), num_threads=1)
    nan = inferencer.meta.calibration.model_copy(update={"a": float("nan")})
    inferencer.meta = inferencer.meta.model_copy(update={"calibration": nan})
    pipeline = Pipeline(
        Store(sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")),
        inferencer,
        DecodeLimits(64_000_000, 1 << 28),
        Destinations(tmp_path / "processed", tmp_path / "quarantine"),
        "t",
        Metrics("t"),
        ModelConfig(),
        0.1,
        0.2,
    )
    images = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        path.write_bytes(png_bytes(900 + i))
        view = view_for(inferencer.meta)
        item = decode_closed(ReadyFile(path, 0.0, datetime.now(UTC)), pipeline.limits, view)
        assert isinstance(item, Decoded)
        images.append(item)
    scored, failed = pipeline._classify(images)
    assert scored == {} and sorted(failed) == sorted(i.sha256 for i in images)
    assert all(r.reason == "inference_failed" and "non-finite" in r.detail for r in failed.values())
    assert np.isnan(inferencer.classify(images[:1])[0].score)
