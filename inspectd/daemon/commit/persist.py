"""Persist stage: one transaction per batch, idempotent on the content hash.

``insert`` is a single INSERT .. ON CONFLICT (content_hash) DO NOTHING .. RETURNING over the whole batch,
so a row committed by an earlier run (or another station) is never written twice, and the caller learns
exactly which rows are new. On a shared incoming folder the same transaction drops the worker's claims
on every image of the batch (claims.py), so a claim ends exactly when its result exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from inspectd.core import db, logs, retry
from inspectd.core.db import Outbox, Result
from inspectd.daemon.commit.plan import KnownRow
from inspectd.daemon.commit.rows import NewRow, refused_row
from inspectd.daemon.intake.claims import ClaimBook
from inspectd.daemon.metrics import Metrics

log = logs.get("inspectd.pipeline")
_T = TypeVar("_T")


class Store:
    def __init__(
        self, engine: Engine, claims: ClaimBook | None = None, outbox_station: str | None = None
    ) -> None:
        """``outbox_station``: publishing is on ([mqtt]): each new row gets its outbox row, in the same
        transaction, for that station's publisher."""
        self.engine = engine
        self.claims = claims
        self.outbox_station = outbox_station
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
            if self.outbox_station is not None and inserted:
                now = datetime.now(UTC)
                queued = [
                    {"result_id": i, "station": self.outbox_station, "queued_at": now}
                    for i in inserted.values()
                ]
                conn.execute(insert(Outbox), queued)
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


class PermanentError(Exception):
    """The database refused an operation for a reason a retry cannot change."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Persist:
    """The persist stage as the pipeline uses it: the store, behind the outage policy (retry.py)."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        retry_initial_s: float,
        retry_max_s: float,
        should_abort: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.should_abort = should_abort

    def known(self, hashes: Iterable[str]) -> dict[str, KnownRow]:
        wanted = list(hashes)
        return self.with_retry(lambda: self.store.known(wanted))

    def insert(
        self, rows: list[NewRow], hashes: list[str], quarantine: Path
    ) -> tuple[dict[str, int], set[str], dict[str, Path]]:
        """Insert the batch's new rows in one transaction. When the database refuses the batch for good
        (not an outage: a value it cannot store), each row is tried alone, a refused row is replaced by
        an error row saying why, and a file whose error row is refused too is left unrecorded in
        incoming (``refused``); the rest of the batch is recorded either way. Also returns where the
        files of the substituted error rows go (quarantine)."""
        try:
            return self.with_retry(lambda: self.store.insert([r.values() for r in rows], hashes)), set(), {}
        except PermanentError as exc:
            log.error("db.batch_refused", rows=len(rows), error=db.brief(exc.cause))
        inserted: dict[str, int] = {}
        refused: set[str] = set()
        moved: dict[str, Path] = {}
        for row in rows:
            substitute = refused_row(row, quarantine)
            for attempt in (row, substitute):
                try:
                    inserted.update(self.with_retry(partial(self.store.insert, [attempt.values()])))
                    if attempt is substitute:
                        moved[row.content_hash] = Path(substitute.stored_path)
                    break
                except PermanentError as exc:
                    log.error(
                        "db.row_refused",
                        sha256=row.content_hash,
                        file=row.original_name,
                        error=db.brief(exc.cause),
                    )
            else:
                refused.add(row.content_hash)
        self.with_retry(partial(self.store.insert, [], hashes))  # the claims of the batch end here
        return inserted, refused, moved

    def forget(self, hashes: Iterable[str]) -> None:
        """These files are out of flight (shared folder: their claims are no longer renewed)."""
        if self.store.claims is not None:
            self.store.claims.forget(hashes)

    def set_stored_path(self, row_id: int, stored_path: str) -> None:
        try:
            self.with_retry(partial(self.store.set_stored_path, row_id, stored_path))
        except PermanentError as exc:
            log.error("db.stored_path_refused", row_id=row_id, error=db.brief(exc.cause))

    def with_retry(self, operation: Callable[[], _T]) -> _T:
        """Run a database operation, waiting out outages (retry.py); an error that a retry cannot mend
        (a constraint, a value the database cannot store) raises PermanentError."""

        def attempt() -> _T:
            try:
                return operation()
            except SQLAlchemyError as exc:
                if db.transient(exc):
                    raise
                raise PermanentError(exc) from exc
            except (ValueError, TypeError) as exc:  # the driver refused a value (UnicodeEncodeError, ...)
                raise PermanentError(exc) from exc

        return retry.until_available(
            attempt, self.retry_initial_s, self.retry_max_s, self._failed, self.should_abort
        )

    def _failed(self, exc: SQLAlchemyError, retry_in_s: float) -> None:
        self.metrics.db_failures.inc()
        self.metrics.db_retries.inc()
        self.metrics.db_up.set(0)
        log.error("db.unavailable", error=db.brief(exc), retry_in_s=round(retry_in_s, 2))
