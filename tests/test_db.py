from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from inspectd.core import db
from inspectd.daemon.commit.persist import Store


def row(content_hash: str, **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "content_hash": content_hash,
        "original_name": f"{content_hash}.png",
        "stored_path": "/x",
        "size_bytes": 10,
        "width": 4,
        "height": 4,
        "received_at": now,
        "processed_at": now,
        "latency_s": 0.01,
        "model_version": "m1",
        "threshold": 0.5,
        "score": 0.9,
        "verdict": "present",
        "status": "ok",
        "error_reason": None,
        "station": "s1",
    }
    return {**base, **extra}


def check_store(url: str) -> None:
    engine = db.make_engine(url)
    with pytest.raises(db.SchemaMismatch, match="inspectd db upgrade"):
        db.require_current_schema(engine)
    db.upgrade(engine)
    db.upgrade(engine)  # idempotent
    assert db.require_current_schema(engine) == db.schema_state(engine)[1]
    command.check(db.alembic_config(engine))  # models and migrations agree
    store = Store(engine)
    first = store.insert([row("a"), row("b", status="error", verdict=None, score=None, error_reason="x: y")])
    assert set(first) == {"a", "b"}
    again = store.insert([row("a"), row("c")])
    assert set(again) == {"c"}
    assert again["c"] > max(first.values())
    known = store.known(["a", "b", "zzz"])
    assert set(known) == {"a", "b"} and known["b"].status == "error"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM results")).scalar() == 3
    with pytest.raises(sa.exc.IntegrityError):
        store.insert([row("d", verdict="maybe")])
    with pytest.raises(sa.exc.IntegrityError):
        store.insert([row("e", status="ok", score=None)])
    engine.dispose()


def test_sqlite_store(tmp_path: Any) -> None:
    check_store(f"sqlite:///{tmp_path / 'sub' / 'a.db'}")


def test_sqlite_is_in_wal_mode(tmp_path: Any) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(sa.text("PRAGMA busy_timeout")).scalar() == 10000


@pytest.mark.postgres
def test_postgres_store(postgres_url: str) -> None:
    check_store(postgres_url)


def test_newer_schema_is_refused(tmp_path: Any) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'n.db'}")
    db.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(db.SchemaMismatch, match="newer than this inspectd"):
        db.require_current_schema(engine)


def test_migrations_ship_inside_the_package() -> None:
    assert (db.migrations_dir() / "env.py").is_file()
    assert list((db.migrations_dir() / "versions").glob("0001_*.py"))
