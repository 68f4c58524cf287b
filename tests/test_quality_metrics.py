"""Model quality from labels and scores (daemon/quality.py): the PSI, and the gauges from a real SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from inspectd.core import db
from inspectd.core.db import Result
from inspectd.core.drift import psi, reference, shares
from inspectd.daemon.quality import MIN_SCORES, REFERENCE, Quality


@pytest.mark.parametrize(
    ("reference", "recent", "low", "high"),
    [
        ("uniform", "uniform", 0.0, 0.02),  # the same distribution: no drift
        ("low", "low", 0.0, 0.02),
        ("low", "high", 2.0, 50.0),  # every score moved to the other end
        ("uniform", "mid", 0.25, 10.0),  # concentrated where it was spread: a shift worth a look
    ],
)
def test_psi(reference: str, recent: str, low: float, high: float) -> None:
    rng = np.random.default_rng(0)

    def draw(kind: str) -> list[float]:
        if kind == "uniform":
            return [float(v) for v in rng.uniform(0, 1, 2000)]
        if kind == "low":
            return [float(v) for v in rng.beta(1, 8, 2000)]
        if kind == "high":
            return [float(v) for v in rng.beta(8, 1, 2000)]
        return [float(v) for v in rng.normal(0.5, 0.05, 2000).clip(0, 1)]

    value = psi(draw(reference), draw(recent))
    assert low <= value <= high, value


def test_psi_needs_both_samples() -> None:
    with pytest.raises(ValueError, match="both samples"):
        psi([], [0.5])


def rows(n: int, version: str, scores: np.ndarray, start: int, now: datetime) -> list[dict[str, object]]:
    return [
        {
            "content_hash": f"{start + i:064x}",
            "original_name": f"f{start + i}.png",
            "stored_path": "/p",
            "size_bytes": 1,
            "received_at": now,
            "processed_at": now,
            "latency_s": 0.0,
            "model_version": version,
            "threshold": 0.5,
            "score": float(scores[i]),
            "verdict": "present" if scores[i] >= 0.5 else "absent",
            "status": "ok",
            "station": "line-1",
        }
        for i in range(n)
    ]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_the_gauges_from_the_database(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.upgrade(engine)
    now = datetime.now(UTC)
    rng = np.random.default_rng(1)
    with engine.begin() as conn:
        conn.execute(sa.insert(Result), rows(REFERENCE, "v2", rng.beta(1, 6, REFERENCE), 0, now))
        conn.execute(sa.insert(Result), rows(MIN_SCORES - 1, "v2", rng.beta(6, 1, MIN_SCORES), 10_000, now))
    registry = CollectorRegistry()
    quality = Quality(registry, "line-1")
    quality.refresh(engine, "v2", now)
    assert sample(registry, "inspectd_score_drift", model_version="v2") is None  # not enough yet
    with engine.begin() as conn:
        conn.execute(sa.insert(Result), rows(400, "v2", rng.beta(6, 1, 400), 20_000, now))
        # labels: 3 agree, 1 false positive, 1 false negative; one of them a week ago
        ids = [i for (i,) in conn.execute(sa.select(Result.id).order_by(Result.id).limit(2000))]

        def label(result_id: int, verdict: str, value: str, when: datetime) -> None:
            conn.execute(
                sa.update(Result)
                .where(Result.id == result_id)
                .values(verdict=verdict, label=value, labeled_at=when, labeled_by="ana")
            )

        label(ids[0], "present", "present", now)
        label(ids[1], "present", "present", now - timedelta(days=3))
        label(ids[2], "absent", "absent", now)
        label(ids[3], "present", "absent", now)
        label(ids[4], "absent", "present", now - timedelta(days=8))
    quality.refresh(engine, "v2", now)
    drift = sample(registry, "inspectd_score_drift", model_version="v2")
    assert drift is not None and drift > 1.0  # the scores moved from low to high
    day = {"window": "1d", "model_version": "v2"}
    assert sample(registry, "inspectd_labeled_results", **day, verdict="present", label="present") == 1
    assert sample(registry, "inspectd_labeled_results", **day, verdict="present", label="absent") == 1
    week = {"window": "7d", "model_version": "v2"}
    assert sample(registry, "inspectd_labeled_results", **week, verdict="present", label="present") == 2
    assert sample(registry, "inspectd_labeled_results", **week, verdict="absent", label="present") is None
    engine.dispose()


def test_how_the_last_retrain_ended(tmp_path: Path) -> None:
    from inspectd.core import retrain_status

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.upgrade(engine)
    registry = CollectorRegistry()
    quality = Quality(registry, "line-1")
    quality.refresh(engine, "v1", runs=tmp_path / "runs")  # no retrain yet: no series
    assert sample(registry, "inspectd_retrain_last", outcome="failed") is None
    retrain_status.write(tmp_path / "runs", "refused", "candidate is worse", "v2")
    quality.refresh(engine, "v1", runs=tmp_path / "runs")
    assert sample(registry, "inspectd_retrain_last", outcome="refused") == 1
    assert sample(registry, "inspectd_retrain_last", outcome="promoted") == 0
    assert (sample(registry, "inspectd_retrain_last_finished_timestamp_seconds") or 0) > 0
    (tmp_path / "runs" / "last-retrain.json").write_text("{half a fi")
    quality.refresh(engine, "v1", runs=tmp_path / "runs")  # unreadable: the last values stay
    assert sample(registry, "inspectd_retrain_last", outcome="refused") == 1
    engine.dispose()


def test_input_drift_against_the_versions_stored_reference(tmp_path: Path) -> None:
    """A retrained version keeps its validation set's distributions: darker images than those drift at
    once, from MIN_SCORES results on (no need to wait for a reference on the station)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.upgrade(engine)
    now = datetime.now(UTC)
    rng = np.random.default_rng(2)
    stored = reference(
        {
            "score": list(rng.beta(1, 6, 300)),
            "brightness": list(rng.normal(0.45, 0.03, 300)),
            "contrast": list(rng.normal(0.12, 0.01, 300)),
        }
    )
    assert len(stored["brightness"]) == 10 and abs(sum(stored["brightness"]) - 1) < 1e-4
    registry = CollectorRegistry()
    quality = Quality(registry, "line-1")
    dark = rows(MIN_SCORES, "v4", rng.beta(1, 6, MIN_SCORES), 0, now)
    for row in dark:
        row["brightness"] = float(rng.normal(0.2, 0.03))  # darker than validation
        row["contrast"] = float(rng.normal(0.12, 0.01))  # as contrasted
    with engine.begin() as conn:
        conn.execute(sa.insert(Result), dark)
    quality.refresh(engine, "v4", now, reference=lambda version: stored if version == "v4" else None)
    brightness = sample(registry, "inspectd_input_drift", statistic="brightness", model_version="v4")
    contrast = sample(registry, "inspectd_input_drift", statistic="contrast", model_version="v4")
    score = sample(registry, "inspectd_score_drift", model_version="v4")
    assert brightness is not None and brightness > 1.0
    assert contrast is not None and contrast < 0.25 and score is not None and score < 0.25  # noise only
    assert shares([0.0, 0.49, 0.5, 1.0, 2.0], "contrast") == [0.2, 0, 0, 0, 0, 0, 0, 0, 0, 0.8]
    engine.dispose()
