"""The commit in process: a real Pipeline on real files, real SQLite (migrated) and the bundled model."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from inspectd.core import db
from inspectd.core.config import ModelConfig
from inspectd.core.records import Decoded, Disposition, ReadyFile
from inspectd.core.registry import bundled_model_dir
from inspectd.daemon.commit.infer import classify
from inspectd.daemon.commit.move import Destinations, Mover
from inspectd.daemon.commit.persist import Persist, Store
from inspectd.daemon.commit.pipeline import Pipeline
from inspectd.daemon.intake.decode import DecodeLimits, decode, decode_closed
from inspectd.daemon.intake.workers import Prepared
from inspectd.daemon.metrics import Metrics
from inspectd.model.active import ActiveModel
from inspectd.model.runtime import Inferencer
from tests.conftest import png_bytes


@pytest.fixture(scope="module")
def model() -> ActiveModel:
    return ActiveModel(Inferencer.load(bundled_model_dir(), num_threads=1), ModelConfig())


def make_pipeline(tmp_path: Path, model: ActiveModel) -> Pipeline:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.upgrade(engine)
    metrics = Metrics("t")
    persist = Persist(Store(engine), metrics, 0.05, 0.1)
    destinations = Destinations(tmp_path / "processed", tmp_path / "quarantine", tmp_path / "incoming")
    limits = DecodeLimits(64_000_000, 1 << 28)
    return Pipeline(persist, Mover(destinations, persist, metrics), model, limits, "t", metrics)


def batch(pipeline: Pipeline, paths: list[Path]) -> list[Prepared]:
    view = pipeline.view()
    return [
        Prepared(decode(ReadyFile(p, time.monotonic(), datetime.now(UTC)), pipeline.limits, view), view)
        for p in paths
    ]


def rows(pipeline: Pipeline) -> list[tuple[str, str, str]]:
    with pipeline.persist.store.engine.connect() as conn:
        query = sa.text("SELECT original_name, status, stored_path FROM results ORDER BY id")
        return [tuple(r) for r in conn.execute(query)]


def test_a_batch_is_recorded_once_and_every_file_accounted_for(tmp_path: Path, model: ActiveModel) -> None:
    pipeline = make_pipeline(tmp_path, model)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "a.png").write_bytes(png_bytes(1))
    (incoming / "b.png").write_bytes(png_bytes(2))
    (incoming / "a-again.png").write_bytes(png_bytes(1))
    (incoming / "broken.png").write_bytes(b"\x89PNG not really")
    names = ["a.png", "b.png", "a-again.png", "broken.png"]
    outcomes = pipeline.finish(batch(pipeline, [incoming / n for n in names]))
    by_name = {o.source.path.name: o for o in outcomes}
    assert [by_name[n].disposition for n in names] == [
        Disposition.RECORDED,
        Disposition.RECORDED,
        Disposition.DUPLICATE,
        Disposition.RECORDED,
    ]
    assert list(incoming.iterdir()) == []
    recorded = rows(pipeline)
    assert [(n, s) for n, s, _ in recorded] == [("a.png", "ok"), ("b.png", "ok"), ("broken.png", "error")]
    assert all(Path(p).is_file() for _, _, p in recorded)
    assert "quarantine" in recorded[2][2]
    copy = by_name["a-again.png"].destination
    assert copy is not None and copy.read_bytes() == png_bytes(1)


def test_a_crash_between_commit_and_move_is_recovered_without_a_second_row(
    tmp_path: Path, model: ActiveModel
) -> None:
    pipeline = make_pipeline(tmp_path, model)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "a.png").write_bytes(png_bytes(3))
    pipeline.finish(batch(pipeline, [incoming / "a.png"]))
    [(_, _, stored)] = rows(pipeline)
    shutil.move(stored, incoming / "a.png")  # as if the process died after the commit, before the move
    [outcome] = pipeline.finish(batch(pipeline, [incoming / "a.png"]))
    assert outcome.disposition is Disposition.RECOVERED and outcome.destination == Path(stored)
    assert len(rows(pipeline)) == 1 and Path(stored).is_file() and not (incoming / "a.png").exists()


def test_non_finite_scores_are_inference_failures(tmp_path: Path) -> None:
    inferencer = Inferencer.load(bundled_model_dir(), num_threads=1)
    nan = inferencer.meta.calibration.model_copy(update={"a": float("nan")})
    inferencer.meta = inferencer.meta.model_copy(update={"calibration": nan})
    model = ActiveModel(inferencer, ModelConfig())
    images = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        path.write_bytes(png_bytes(900 + i))
        item = decode_closed(
            ReadyFile(path, 0.0, datetime.now(UTC)), DecodeLimits(64_000_000, 1 << 28), model.view
        )
        assert isinstance(item, Decoded)
        images.append(item)
    scored, failed = classify(model, images)
    assert scored == {} and sorted(failed) == sorted(i.sha256 for i in images)
    assert all(r.reason == "inference_failed" and "non-finite" in r.detail for r in failed.values())
    assert np.isnan(inferencer.classify(images[:1])[0].score)
