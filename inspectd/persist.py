"""Persist stage: one transaction per batch, idempotent on the content hash.

``insert`` is a single INSERT .. ON CONFLICT (content_hash) DO NOTHING .. RETURNING over the whole batch,
so a row committed by an earlier run (or another station) is never written twice, and the caller learns
exactly which rows are new. On a shared incoming folder the same transaction drops the worker's claims
on every image of the batch (claims.py), so a claim ends exactly when its result exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from inspectd.claims import ClaimBook
from inspectd.db import Result


@dataclass(frozen=True, slots=True)
class KnownRow:
    id: int
    stored_path: str
    status: str


class Store:
    def __init__(self, engine: Engine, claims: ClaimBook | None = None) -> None:
        self.engine = engine
        self.claims = claims
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

    def insert(self, rows: Sequence[dict[str, Any]], handled: Iterable[str] = ()) -> dict[str, int]:
        """Insert new rows in one transaction; returns {content_hash: id} of those actually inserted.

        ``handled``: every hash of the batch, whose claims (shared folder) end in the same transaction.
        """
        release = sorted(set(handled)) if self.claims is not None else []
        if not rows and not release:
            return {}
        statement = (
            self._insert(Result)
            .on_conflict_do_nothing(index_elements=[Result.content_hash])
            .returning(Result.content_hash, Result.id)
        )
        with self.engine.begin() as conn:
            inserted = {h: i for h, i in conn.execute(statement, list(rows))} if rows else {}
            if self.claims is not None:
                self.claims.release(conn, release)
            return inserted

    def set_stored_path(self, row_id: int, stored_path: str) -> None:
        """Where a recorded file really went (its planned name was taken meanwhile)."""
        with self.engine.begin() as conn:
            conn.execute(update(Result).where(Result.id == row_id).values(stored_path=stored_path))

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
