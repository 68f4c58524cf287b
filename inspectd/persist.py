"""Persist stage: one transaction per batch, idempotent on the content hash.

``insert`` is a single INSERT .. ON CONFLICT (content_hash) DO NOTHING .. RETURNING over the whole batch,
so a row committed by an earlier run (or another station) is never written twice, and the caller learns
exactly which rows are new.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.dialects import postgresql, sqlite

from inspectd.db import Result


@dataclass(frozen=True, slots=True)
class KnownRow:
    id: int
    stored_path: str
    status: str


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def known(self, hashes: Iterable[str]) -> dict[str, KnownRow]:
        wanted = sorted(set(hashes))
        if not wanted:
            return {}
        query = select(Result.content_hash, Result.id, Result.stored_path, Result.status).where(
            Result.content_hash.in_(wanted)
        )
        with self.engine.connect() as conn:
            return {h: KnownRow(i, p, s) for h, i, p, s in conn.execute(query)}

    def insert(self, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
        """Insert new rows in one transaction; returns {content_hash: id} of those actually inserted."""
        if not rows:
            return {}
        statement = (
            self._insert(Result)
            .on_conflict_do_nothing(index_elements=[Result.content_hash])
            .returning(Result.content_hash, Result.id)
        )
        with self.engine.begin() as conn:
            return {h: i for h, i in conn.execute(statement, list(rows))}

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
