"""One micro-batch through decode -> infer -> persist -> archive, and the account of every file in it.

Order of effects, for crash safety: the row is committed first, the file is moved after. A crash in
between leaves the file in incoming; when it is seen again its hash finds the committed row and the file
is moved where that row says (``recovered``), so there is never a second row and never a lost file.

On a shared incoming folder each file is claimed by its hash between reading and decoding (claims.py);
a file another worker holds is left alone (``elsewhere``) and offered again once that lease could end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from inspectd import archive, db, logs
from inspectd.claims import ClaimState
from inspectd.decode import DecodeLimits, decode_loaded, identity_hash, load
from inspectd.infer import Inferencer
from inspectd.metrics import Metrics
from inspectd.persist import KnownRow, Store
from inspectd.records import (
    Decoded,
    Disposition,
    Held,
    Loaded,
    Outcome,
    ReadyFile,
    Rejected,
    Scored,
    Status,
    Vanished,
)
from inspectd.tiles import View, view_for

log = logs.get("inspectd.pipeline")
CLAIM_UNAVAILABLE = "claim_unavailable"
_T = TypeVar("_T")


class Aborted(Exception):
    """The database stayed unreachable until shutdown: the batch's files stay in incoming, untouched."""


@dataclass(frozen=True, slots=True)
class Destinations:
    processed: Path
    quarantine: Path


@dataclass(frozen=True, slots=True)
class _Planned:
    """A file's new row (None when its hash is known), its score, and where it goes after the commit."""

    item: Decoded | Rejected
    scored: Scored | None
    row: dict[str, Any] | None
    dest: Path
    known: KnownRow | None


Stage = Decoded | Rejected | Vanished | Held


@dataclass(frozen=True, slots=True)
class InFlight:
    """A batch whose files are being decoded in the pool (on a shared folder: read, claimed as one batch,
    then the claimed ones decoded; ``claimed`` yields their futures)."""

    batch: list[ReadyFile]
    view: View
    futures: list[Future[Stage]]
    started: float
    claimed: Future[list[Future[Stage]]] | None = None


def _done(value: Stage) -> Future[Stage]:
    future: Future[Stage] = Future()
    future.set_result(value)
    return future


def _held_reason(item: Vanished | Held) -> str | None:
    if not isinstance(item, Held):
        return None
    return f"held by {item.holder}" if item.holder else CLAIM_UNAVAILABLE


class Pipeline:
    def __init__(
        self,
        store: Store,
        inferencer: Inferencer,
        limits: DecodeLimits,
        destinations: Destinations,
        station: str,
        metrics: Metrics,
        workers: int,
        threshold: float | None,
        retry_initial_s: float,
        retry_max_s: float,
        should_abort: Callable[[], bool] = lambda: False,
        roi: tuple[float, float, float, float] | None = None,
        tile: int | None = None,
        tile_overlap: float | None = None,
        tile_reduce: str = "max",
    ) -> None:
        self.store = store
        self.inferencer = inferencer
        self.limits = limits
        self.destinations = destinations
        self.station = station
        self.metrics = metrics
        self.threshold = threshold
        self.roi = roi
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.tile_reduce = tile_reduce
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.should_abort = should_abort
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        self._claimer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="claim")

    def close(self) -> None:
        self._claimer.shutdown(wait=True)
        self._pool.shutdown(wait=True)

    def start(self, batch: list[ReadyFile]) -> InFlight:
        """Decode stage, in the background: the caller finishes the previous batch meanwhile."""
        view = self.view()
        if self.store.claims is None:
            futures = [self._pool.submit(self._decode_one, ready, view) for ready in batch]
            return InFlight(batch, view, futures, time.perf_counter())
        loads = [self._pool.submit(self._load_one, ready) for ready in batch]
        claimed = self._claimer.submit(self._claim_then_decode, loads, view)
        return InFlight(batch, view, [], time.perf_counter(), claimed)

    def view(self) -> View:
        """How the active model looks at a frame: its input size, the ROI, its tiling."""
        return view_for(self.inferencer.meta, self.roi, self.tile, self.tile_overlap)

    def finish(self, flight: InFlight) -> list[Outcome]:
        """Wait for a batch's decoding, then infer, persist and archive it."""
        decoded = self._wait(flight)
        if flight.view != self.view():  # the model changed input size or tiling meanwhile
            flight = self.start(flight.batch)
            decoded = self._wait(flight)
        self.metrics.stage.labels("decode").observe(time.perf_counter() - flight.started)
        self.metrics.batch_size.observe(len(flight.batch))

        items = [d for d in decoded if isinstance(d, Decoded | Rejected)]
        known = self._with_retry(lambda: self.store.known(i.sha256 for i in items))
        fresh: list[Decoded] = []
        seen: set[str] = set()
        for item in items:
            if isinstance(item, Decoded) and item.sha256 not in known and item.sha256 not in seen:
                fresh.append(item)
            seen.add(item.sha256)

        started = time.perf_counter()
        scored, failed = self._classify(fresh)
        items = [failed.get(i.sha256, i) if isinstance(i, Decoded) else i for i in items]
        if fresh:
            self.metrics.stage.labels("infer").observe(time.perf_counter() - started)

        plans = self._plan(items, scored, known)
        started = time.perf_counter()
        rows = [p.row for p in plans if p.row is not None]
        inserted = self._with_retry(lambda: self.store.insert(rows, (i.sha256 for i in items)))
        committed = time.monotonic()
        self.metrics.stage.labels("persist").observe(time.perf_counter() - started)
        self.metrics.db_up.set(1)

        outcomes = [
            Outcome(
                v.source,
                v.sha256 if isinstance(v, Held) else None,
                Disposition.ELSEWHERE if isinstance(v, Held) else Disposition.VANISHED,
                None,
                None,
                None,
                None,
                None,
                _held_reason(v),
                committed - v.source.ready_at,
            )
            for v in decoded
            if isinstance(v, Vanished | Held)
        ]
        started = time.perf_counter()
        outcomes += [self._archive(plan, inserted, committed) for plan in plans]
        self.metrics.stage.labels("archive").observe(time.perf_counter() - started)
        return outcomes

    @staticmethod
    def _wait(flight: InFlight) -> list[Stage]:
        futures = flight.claimed.result() if flight.claimed is not None else flight.futures
        return [f.result() for f in futures]

    def _decode_one(self, ready: ReadyFile, view: View) -> Stage:
        loaded = self._load_one(ready)
        return self._decode_loaded(loaded, view) if isinstance(loaded, Loaded) else loaded

    def _load_one(self, ready: ReadyFile) -> Loaded | Rejected | Vanished:
        try:
            return load(ready, self.limits)
        except Exception as exc:
            log.exception("decode.internal_error", file=ready.path.name)
            return self._internal_error(ready, exc)

    def _decode_loaded(self, loaded: Loaded, view: View) -> Stage:
        try:
            return decode_loaded(loaded, self.limits, view)
        except Exception as exc:
            log.exception("decode.internal_error", file=loaded.source.path.name)
            return self._internal_error(loaded.source, exc)

    def _internal_error(self, ready: ReadyFile, exc: Exception) -> Rejected | Vanished:
        """The per-image boundary: whatever goes wrong with one file is recorded against that file."""
        try:
            st = ready.path.lstat()
        except FileNotFoundError:
            return Vanished(ready)
        return Rejected(
            ready,
            identity_hash("internal", ready.path.name, st),
            st.st_size,
            "internal_error",
            f"{type(exc).__name__}: {exc}",
        )

    def _claim_then_decode(
        self, loads: list[Future[Loaded | Rejected | Vanished]], view: View
    ) -> list[Future[Stage]]:
        """Shared folder: claim the batch's files in one transaction; decode only those won."""
        claims = self.store.claims
        assert claims is not None
        items = [f.result() for f in loads]
        wanted = {i.sha256: str(i.source.path) for i in items if not isinstance(i, Vanished)}
        try:
            results = claims.claim_many(wanted)
        except SQLAlchemyError as exc:
            self.metrics.claims.labels("unavailable").inc(len(wanted))
            log.warning("claim.unavailable", files=len(wanted), error=db.brief(exc))
            results = None
        out: list[Future[Stage]] = []
        for item in items:
            if isinstance(item, Vanished):
                out.append(_done(item))
                continue
            result = results[item.sha256] if results is not None else None
            if result is not None:
                self.metrics.claims.labels(result.state.value).inc()
            if result is None or result.state is ClaimState.HELD:
                out.append(_done(Held(item.source, item.sha256, result.holder if result else None)))
                continue
            if result.state is ClaimState.TAKEN_OVER:
                log.info("claim.taken_over", file=item.source.path.name, sha256=item.sha256)
            if isinstance(item, Loaded):
                out.append(self._pool.submit(self._decode_loaded, item, view))
            else:
                out.append(_done(item))
        return out

    def _classify(self, fresh: list[Decoded]) -> tuple[dict[str, Scored], dict[str, Rejected]]:
        """Score the batch in one call; if that fails, score image by image so one bad input is recorded
        as its own error and the others still get their verdicts."""
        try:
            batch = self.inferencer.classify(fresh, self.threshold, self.tile_reduce)
            return {s.image.sha256: s for s in batch}, {}
        except (RuntimeError, ValueError) as exc:
            log.error("infer.batch_failed", images=len(fresh), error=str(exc))
        scored: dict[str, Scored] = {}
        failed: dict[str, Rejected] = {}
        for image in fresh:
            try:
                scored[image.sha256] = self.inferencer.classify([image], self.threshold, self.tile_reduce)[0]
            except (RuntimeError, ValueError) as exc:
                failed[image.sha256] = Rejected(
                    image.source,
                    image.sha256,
                    image.size_bytes,
                    "inference_failed",
                    str(exc),
                    image.width,
                    image.height,
                )
        return scored, failed

    # --- planning ------------------------------------------------------------------------------------

    def _plan(
        self, items: list[Decoded | Rejected], scored: dict[str, Scored], known: dict[str, KnownRow]
    ) -> list[_Planned]:
        now = datetime.now(UTC)
        taken: set[Path] = set()
        plans: list[_Planned] = []
        claimed: set[str] = set()
        for item in items:
            path = item.source.path
            row_known = known.get(item.sha256)
            if row_known is not None and not Path(row_known.stored_path).exists():
                # committed by an earlier run that stopped before the move: finish that move
                plans.append(_Planned(item, None, None, Path(row_known.stored_path), row_known))
                continue
            if row_known is not None or item.sha256 in claimed:
                root = self._root_for(row_known.status if row_known else self._status(item))
                dest = archive.plan(root, now, path.name, item.sha256, taken)
                plans.append(_Planned(item, None, None, dest, row_known))
                continue
            claimed.add(item.sha256)
            status = self._status(item)
            dest = archive.plan(self._root_for(status), now, path.name, item.sha256, taken)
            score = scored.get(item.sha256)
            plans.append(_Planned(item, score, self._row(score or item, dest, now), dest, None))
        return plans

    @staticmethod
    def _status(item: Decoded | Rejected) -> str:
        return Status.ERROR.value if isinstance(item, Rejected) else Status.OK.value

    def _root_for(self, status: str) -> Path:
        return self.destinations.quarantine if status == Status.ERROR else self.destinations.processed

    def _row(self, item: Scored | Rejected | Decoded, dest: Path, now: datetime) -> dict[str, Any]:
        if isinstance(item, Decoded):
            raise AssertionError("every new image is scored before its row is built")
        source = item.image.source if isinstance(item, Scored) else item.source
        row: dict[str, Any] = {
            "original_name": source.path.name,
            "stored_path": str(dest),
            "received_at": source.received_at,
            "processed_at": now,
            "latency_s": max(0.0, time.monotonic() - source.ready_at),
            "station": self.station,
            "model_version": None,
            "threshold": None,
            "score": None,
            "verdict": None,
            "error_reason": None,
            "box_x": None,
            "box_y": None,
            "box_w": None,
            "box_h": None,
        }
        if isinstance(item, Scored):
            image = item.image
            row.update(
                content_hash=image.sha256,
                size_bytes=image.size_bytes,
                width=image.width,
                height=image.height,
                status=Status.OK.value,
                model_version=item.model_version,
                threshold=item.threshold,
                score=item.score,
                verdict=item.verdict.value,
            )
            if item.box is not None:
                row.update(zip(("box_x", "box_y", "box_w", "box_h"), item.box, strict=True))
        else:
            row.update(
                content_hash=item.sha256,
                size_bytes=item.size_bytes,
                width=item.width,
                height=item.height,
                status=Status.ERROR.value,
                error_reason=f"{item.reason}: {item.detail}",
            )
        return row

    # --- after commit --------------------------------------------------------------------------------

    def _archive(self, plan: _Planned, inserted: dict[str, int], committed: float) -> Outcome:
        item = plan.item
        if plan.row is not None and item.sha256 in inserted:
            disposition, row_id = Disposition.RECORDED, inserted.get(item.sha256)
        elif plan.known is not None and plan.dest == Path(plan.known.stored_path):
            disposition, row_id = Disposition.RECOVERED, plan.known.id
        else:  # a known hash, or a row another writer inserted between our lookup and our insert
            disposition, row_id = Disposition.DUPLICATE, plan.known.id if plan.known else None
        reason = item.reason if isinstance(item, Rejected) else None
        dest: Path | None = plan.dest
        try:
            archive.move(item.source.path, plan.dest)
        except FileNotFoundError:
            log.warning("archive.source_gone", file=item.source.path.name, row_id=row_id)
            dest = None
        except OSError as exc:
            log.error(
                "archive.failed",
                file=item.source.path.name,
                dest=str(plan.dest),
                error=exc.strerror or str(exc),
                row_id=row_id,
            )
            dest = None
            if disposition is Disposition.RECORDED:
                self.metrics.dispositions.labels(Disposition.DEFERRED.value).inc()
            else:
                disposition = Disposition.DEFERRED
        if dest is not None and isinstance(item, Rejected) and disposition is not Disposition.RECOVERED:
            try:
                archive.write_reason(dest, item.reason, item.detail)
            except OSError as exc:  # the file is quarantined and its row says why; the note is a courtesy
                log.warning("archive.note_failed", file=item.source.path.name, error=exc.strerror or str(exc))
        scored = plan.scored if disposition is Disposition.RECORDED else None
        return Outcome(
            source=item.source,
            sha256=item.sha256,
            disposition=disposition,
            status=Status.ERROR if reason else Status.OK,
            verdict=scored.verdict if scored else None,
            score=scored.score if scored else None,
            destination=dest,
            row_id=row_id,
            reason=reason,
            latency_s=committed - item.source.ready_at,
        )

    # --- database outages ----------------------------------------------------------------------------

    def _with_retry(self, operation: Callable[[], _T]) -> _T:
        delay = self.retry_initial_s
        while True:
            try:
                return operation()
            except SQLAlchemyError as exc:
                self.metrics.db_failures.inc()
                self.metrics.db_up.set(0)
                log.error(
                    "db.unavailable",
                    error=db.brief(exc),
                    retry_in_s=round(delay, 2),
                )
                if self.should_abort():
                    raise Aborted("database unreachable at shutdown") from exc
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:
                    if self.should_abort():
                        raise Aborted("database unreachable at shutdown") from exc
                    time.sleep(min(0.1, delay))
                delay = min(delay * 2, self.retry_max_s)
                self.metrics.db_retries.inc()
