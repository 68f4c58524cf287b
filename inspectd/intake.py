"""Decode stage, running: worker threads take each file the moment it is ready, read and hash it (claim
it, on a shared folder), decode it, and queue the result for the batch stage as soon as it is done.

Files are decoded one by one as they become ready, not a batch at a time: a lone image is never held
back by batch formation, and the cores never wait for the pipeline thread to hand them the next batch.
OpenCV releases the GIL while it decodes, so one thread per core uses every core.

Backpressure: the queue of decoded files is bounded. When the pipeline thread falls behind (a database
outage) the workers stop taking files, which stay ready in readiness's queue and on disk in incoming.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from inspectd import db, logs
from inspectd.claims import ClaimBook, ClaimState
from inspectd.decode import DecodeLimits, decode_loaded, identity_hash, load
from inspectd.metrics import Metrics
from inspectd.readiness import Readiness
from inspectd.records import Held, Loaded, ReadyFile, Rejected, Stage, Vanished
from inspectd.tiles import View

log = logs.get("inspectd.intake")
_T = TypeVar("_T")

TAKE_TIMEOUT_S = 0.25  # how often an idle worker notices a stop
PUT_TIMEOUT_S = 0.25  # how often a worker blocked on a full queue notices an abandon


@dataclass(frozen=True, slots=True)
class Prepared:
    """A file through the decode stage, and the view of the model it was prepared for."""

    item: Stage
    view: View


class Intake:
    def __init__(
        self,
        readiness: Readiness,
        limits: DecodeLimits,
        view: Callable[[], View],
        workers: int,
        metrics: Metrics,
        capacity: int,
        claims: ClaimBook | None = None,
        claim_group: int = 1,
    ) -> None:
        self._readiness = readiness
        self._limits = limits
        self._view = view
        self._metrics = metrics
        self._claims = claims
        # files a worker takes at once: one (lowest latency), or a group claimed in one transaction
        self._group = claim_group if claims is not None else 1
        self._out: queue.Queue[Prepared] = queue.Queue(maxsize=capacity)
        self._stopping = threading.Event()
        self._abandoned = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"decode-{i}", daemon=True) for i in range(workers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def get(self, timeout: float) -> Prepared | None:
        """The next decoded file, waiting up to ``timeout`` seconds (0: only if one is queued)."""
        try:
            return self._out.get(timeout=timeout) if timeout > 0 else self._out.get_nowait()
        except queue.Empty:
            return None

    def behind(self) -> bool:
        """Files are ready that no worker has taken yet: decoding is the bottleneck right now."""
        return self._readiness.queued() > 0

    def stop(self) -> None:
        """Take no new files; those already taken are decoded and queued."""
        self._stopping.set()

    def drained(self) -> bool:
        """Stopped, every worker gone, nothing left in the queue."""
        return self._stopping.is_set() and not any(t.is_alive() for t in self._threads) and self._out.empty()

    def abandon(self) -> None:
        """Shutdown without a database: stop, and let workers drop what they hold (it stays in incoming)."""
        self._stopping.set()
        self._abandoned.set()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # --- worker threads ------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            files = self._readiness.take(self._group, TAKE_TIMEOUT_S)
            if not files:
                continue
            view = self._view()
            started = time.perf_counter()
            loaded = [guarded(ready, partial(load, ready, self._limits)) for ready in files]
            read_s = (time.perf_counter() - started) / len(files)  # read + hash, per file
            items: list[Loaded | Stage] = self._claim(loaded) if self._claims is not None else [*loaded]
            for item in items:
                done: Stage
                if isinstance(item, Loaded):
                    started = time.perf_counter()
                    done = guarded(item.source, partial(decode_loaded, item, self._limits, view))
                    self._metrics.stage.labels("decode").observe(read_s + time.perf_counter() - started)
                else:
                    done = item
                if not self._put(Prepared(done, view)):
                    return

    def _put(self, prepared: Prepared) -> bool:
        while not self._abandoned.is_set():
            try:
                self._out.put(prepared, timeout=PUT_TIMEOUT_S)
                return True
            except queue.Full:
                continue
        return False

    def _claim(self, items: list[Loaded | Rejected | Vanished]) -> list[Loaded | Stage]:
        """Shared folder: claim the group's files in one transaction; only those won are decoded."""
        claims = self._claims
        assert claims is not None
        wanted = {i.sha256: str(i.source.path) for i in items if not isinstance(i, Vanished)}
        try:
            results = claims.claim_many(wanted)
        except SQLAlchemyError as exc:
            self._metrics.claims.labels("unavailable").inc(len(wanted))
            log.warning("claim.unavailable", files=len(wanted), error=db.brief(exc))
            results = None
        out: list[Loaded | Stage] = []
        for item in items:
            if isinstance(item, Vanished):
                out.append(item)
                continue
            result = results[item.sha256] if results is not None else None
            if result is not None:
                self._metrics.claims.labels(result.state.value).inc()
            if result is None or result.state is ClaimState.HELD:
                out.append(Held(item.source, item.sha256, result.holder if result else None))
                continue
            if result.state is ClaimState.TAKEN_OVER:
                log.info("claim.taken_over", file=item.source.path.name, sha256=item.sha256)
            out.append(item)
        return out


def guarded(ready: ReadyFile, step: Callable[[], _T]) -> _T | Rejected | Vanished:
    """The per-image boundary: whatever goes wrong in ``step`` with one file is recorded against that
    file (an ``internal_error`` row), and the daemon goes on with the others."""
    try:
        return step()
    except Exception as exc:
        log.exception("decode.internal_error", file=ready.path.name)
        return _internal_error(ready, exc)


def _internal_error(ready: ReadyFile, exc: Exception) -> Rejected | Vanished:
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
