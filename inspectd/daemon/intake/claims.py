"""Claim stage, for an incoming folder shared by several workers (``[cluster] shared_incoming``).

Every worker sees every file; each reads and hashes it, then claims the hash in the ``claims`` table with
one atomic upsert: it wins when no row exists, when the row is its own, or when the holder's lease has
run out (a crashed or hung worker: its claim is taken over; a live one keeps renewing its leases,
leases.py). Only the winner decodes, scores, records and moves the file; the row is deleted in the
transaction that commits the result. Times are the database's clock, so workers on machines whose
clocks disagree still agree on when a lease ends.

A worker is ``station@host``: stable across restarts, so a restarted daemon resumes its own claims at
once. Station names must therefore be unique per daemon.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    Float,
    String,
    cast,
    delete,
    extract,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from inspectd.core.db import Claim, Result

RENEW_CHUNK = 500  # hashes per renewal statement
STALE_CLAIM_S = 86_400.0  # expired claims older than this (their file removed by hand) are purged


class ClaimState(StrEnum):
    CLAIMED = "claimed"
    TAKEN_OVER = "taken_over"  # the previous holder's lease had run out
    HELD = "held"  # another worker holds it
    KNOWN = "known"  # its result is already committed: nothing to claim


@dataclass(frozen=True, slots=True)
class ClaimResult:
    state: ClaimState
    holder: str


def worker_id(station: str) -> str:
    return f"{station}@{socket.gethostname()}"[:160]


def db_now(dialect: str) -> ColumnElement[float]:
    """Seconds since the epoch by the database server's clock."""
    if dialect == "postgresql":
        return cast(extract("epoch", func.clock_timestamp()), Float)
    return cast((func.julianday("now") - 2440587.5) * 86400.0, Float)


class ClaimBook:
    def __init__(self, engine: Engine, station: str, lease_s: float, worker: str | None = None) -> None:
        self.engine = engine
        self.station = station
        self.lease_s = lease_s
        self.worker = worker or worker_id(station)
        dialect = engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._now = db_now(dialect)
        self._postgres = dialect == "postgresql"
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()  # hashes this worker claimed and has not finished (renew)

    def claim(self, sha256: str, path: str) -> ClaimResult:
        return self.claim_many({sha256: path})[sha256]

    def claim_many(self, wanted: dict[str, str]) -> dict[str, ClaimResult]:
        """Claim a batch of images ({hash: path}) in one transaction: one statement for those won (the
        common case), a second look at the others (held by another worker, or already recorded).
        Raises SQLAlchemyError when the database cannot be reached."""
        if not wanted:
            return {}
        upsert = self._claim_statement(wanted)
        out: dict[str, ClaimResult] = {}
        with self.engine.begin() as conn:
            if self._postgres:
                # A claim is advisory (the unique content hash decides in the end): it need not wait for
                # the WAL flush. Losing the last claims in a server crash costs a repeated decode at most.
                conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
            for sha, taken_over in conn.execute(upsert):
                out[sha] = ClaimResult(
                    ClaimState.TAKEN_OVER if taken_over else ClaimState.CLAIMED, self.worker
                )
            with self._lock:
                self._in_flight.update(out)
            lost = sorted(set(wanted) - set(out))
            if lost:
                # already recorded (by a worker that has not moved the file yet, or a copy of the same
                # bytes): no claim needed, the known-row path of the pipeline finishes the file
                known = select(Result.content_hash).where(Result.content_hash.in_(lost))
                for sha in conn.execute(known).scalars():
                    out[sha] = ClaimResult(ClaimState.KNOWN, self.worker)
                holders = select(Claim.content_hash, Claim.worker).where(Claim.content_hash.in_(lost))
                for sha, worker in conn.execute(holders):
                    out.setdefault(sha, ClaimResult(ClaimState.HELD, worker))
        for sha in wanted:  # recorded and released between the two looks: nothing left to hold it
            out.setdefault(sha, ClaimResult(ClaimState.HELD, "?"))
        return out

    def _claim_statement(self, wanted: dict[str, str]) -> Any:
        """INSERT the claims of images not recorded yet; take over a lease that ran out; RETURNING what
        was won (and whether it was taken over)."""
        now = self._now
        rows = union_all(
            *(
                select(literal(h, String).label("h"), literal(p, String).label("p"))
                for h, p in sorted(wanted.items())
            )
        ).subquery("wanted")
        recorded = select(Result.id).where(Result.content_hash == rows.c.h).exists()
        source = select(
            rows.c.h,
            literal(self.worker, String),
            literal(self.station, String),
            rows.c.p,
            now,
            now + literal(self.lease_s, Float),
            literal(False, Boolean),
        ).where(~recorded)
        statement = self._insert(Claim).from_select(
            ["content_hash", "worker", "station", "path", "claimed_at", "lease_until", "taken_over"], source
        )
        excluded = statement.excluded
        upsert = statement.on_conflict_do_update(
            index_elements=[Claim.content_hash],
            set_={
                "worker": excluded.worker,
                "station": excluded.station,
                "path": excluded.path,
                "claimed_at": excluded.claimed_at,
                "lease_until": excluded.lease_until,
                "taken_over": Claim.worker != excluded.worker,
            },
            where=or_(Claim.worker == excluded.worker, Claim.lease_until < excluded.claimed_at),
        ).returning(Claim.content_hash, Claim.taken_over)
        return upsert

    def renew(self) -> int:
        """Extend the leases of the claims this worker holds for files still in flight (leases.py calls
        it while the daemon is alive), so only a crashed or hung worker's claims run out; the number
        renewed. Rows locked by another transaction at that instant (a release, a take-over) are skipped,
        not waited for, and the rows are locked in hash order as claims are: no deadlock. Raises
        SQLAlchemyError."""
        with self._lock:
            wanted = sorted(self._in_flight)
        renewed = 0
        for start in range(0, len(wanted), RENEW_CHUNK):
            chunk = wanted[start : start + RENEW_CHUNK]
            mine = (
                select(Claim.content_hash)
                .where(Claim.worker == self.worker, Claim.content_hash.in_(chunk))
                .order_by(Claim.content_hash)
                .with_for_update(skip_locked=True)
            )
            statement = (
                update(Claim)
                .where(Claim.content_hash.in_(mine.scalar_subquery()))
                .values(lease_until=self._now + literal(self.lease_s, Float))
            )
            with self.engine.begin() as conn:
                if self._postgres:
                    conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
                renewed += int(conn.execute(statement).rowcount or 0)
        return renewed

    def forget(self, hashes: Iterable[str]) -> None:
        """These files are no longer in flight (finished, changed, gone): their leases are not renewed."""
        with self._lock:
            self._in_flight.difference_update(hashes)

    def release(self, conn: Connection, hashes: Iterable[str]) -> None:
        """Drop this worker's claims, inside the transaction that commits their results."""
        wanted = sorted(set(hashes))
        if wanted:
            conn.execute(delete(Claim).where(Claim.content_hash.in_(wanted), Claim.worker == self.worker))
            self.forget(wanted)

    def purge_stale(self) -> int:
        """Remove expired claims that no one will take over: their image has a result (a worker died
        in the instant between another's commit and its move), or they are a day old (the file was
        removed by hand)."""
        recorded = select(Result.content_hash).where(Result.content_hash == Claim.content_hash).exists()
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(Claim).where(
                    Claim.lease_until < self._now,
                    or_(recorded, Claim.lease_until < self._now - literal(STALE_CLAIM_S, Float)),
                )
            )
        return int(result.rowcount or 0)
