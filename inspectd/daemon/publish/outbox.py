"""The outbox's queries: what a station has to publish, and what the broker acknowledged."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, delete, func, select

from inspectd.core import results
from inspectd.core.db import Outbox, Result, result_columns


class OutboxStore:
    def __init__(self, engine: Engine, station: str) -> None:
        self.engine = engine
        self.station = station

    def pending(self, after: int, limit: int) -> list[dict[str, Any]]:
        """The station's unacknowledged results with an id above ``after``, oldest first, as JSON rows."""
        columns = result_columns()
        statement = (
            select(*(getattr(Result, c) for c in columns))
            .join(Outbox, Outbox.result_id == Result.id)
            .where(Outbox.station == self.station, Outbox.result_id > after)
            .order_by(Outbox.result_id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return results.as_dicts(conn.execute(statement), columns)

    def acknowledged(self, ids: Iterable[int]) -> None:
        wanted = sorted(set(ids))
        if not wanted:
            return
        with self.engine.begin() as conn:
            conn.execute(delete(Outbox).where(Outbox.result_id.in_(wanted)))

    def backlog(self) -> int:
        with self.engine.connect() as conn:
            statement = select(func.count()).select_from(Outbox).where(Outbox.station == self.station)
            return int(conn.execute(statement).scalar_one())
