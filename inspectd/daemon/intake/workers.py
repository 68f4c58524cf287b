"""Decode stage, running: worker threads take each file the moment it is ready, read and hash it (claim
it, on a shared folder), decode it, and queue the result for the batch stage as soon as it is done.

Files are decoded one by one as they become ready, not a batch at a time: a lone image is never held
back by batch formation, and the cores never wait for the pipeline thread to hand them the next batch.
OpenCV releases the GIL while it decodes, so a thread per core (plus one) keeps every core busy. The
bytes held at once are bounded by a memory budget (budget.py). A worker never dies of one file: an
unexpected error is recorded against the file (``guarded``), and anything else puts the worker's files
back to readiness; ``alive`` tells the daemon's liveness check whether a worker is gone or stuck.

Backpressure: the queue of decoded files is bounded. When the pipeline thread falls behind (a database
outage) the workers stop taking files, which stay ready in readiness's queue and on disk in incoming.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from inspectd.core import db, logs
from inspectd.core.records import Changed, Decoded, Held, Loaded, ReadyFile, Rejected, Stage, Vanished
from inspectd.core.tiles import View
from inspectd.daemon.commit.archive import safe_name
from inspectd.daemon.intake.budget import MemoryBudget
from inspectd.daemon.intake.claims import ClaimBook, ClaimState
from inspectd.daemon.intake.decode import DecodeLimits, decode, decode_loaded, identity_hash, load
from inspectd.daemon.intake.readiness import Readiness
from inspectd.daemon.metrics import Metrics

log = logs.get("inspectd.intake")
_T = TypeVar("_T")

TAKE_TIMEOUT_S = 0.25  # how often an idle worker notices a stop
QUEUED_BYTES_MAX = 256 << 20  # model inputs waiting for the batch stage (one file always fits)
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
        budget: MemoryBudget | None = None,
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
        self._budget = budget or MemoryBudget(1 << 62)
        self._busy: dict[str, float] = {}  # worker name -> when it began reading or decoding a file
        self._queued_bytes = 0  # model inputs (tiles) of the decoded files in the queue
        self._queued_cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"decode-{i}", daemon=True) for i in range(workers)
        ]
        self._threads_started = False

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._threads_started = True

    def get(self, timeout: float) -> Prepared | None:
        """The next decoded file, waiting up to ``timeout`` seconds (0: only if one is queued)."""
        try:
            prepared = self._out.get(timeout=timeout) if timeout > 0 else self._out.get_nowait()
        except queue.Empty:
            return None
        with self._queued_cond:
            self._queued_bytes -= model_input_bytes(prepared.item)
            self._queued_cond.notify_all()
        return prepared

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
            try:
                if not self._handle(files):
                    return
            except Exception:  # never lose a worker: what it held goes back to readiness
                log.exception("decode.worker_error", files=len(files))
                self._readiness.release([f.path for f in files], again=[f.path for f in files])

    @contextmanager
    def _working(self) -> Iterator[None]:
        """Time spent reading and decoding, which ``alive`` watches (not waiting for the queue: that is
        the pipeline's backpressure, during a database outage as long as the outage)."""
        name = threading.current_thread().name
        self._busy[name] = time.monotonic()
        try:
            yield
        finally:
            self._busy.pop(name, None)

    def _handle(self, files: list[ReadyFile]) -> bool:
        """Decode the files a worker took and queue them; False when abandoned at shutdown."""
        view = self._view()
        done: Stage
        if self._claims is None:
            for ready in files:
                started = time.perf_counter()
                with self._working():
                    done = guarded(ready, partial(decode, ready, self._limits, view, self._budget))
                self._metrics.stage.labels("decode").observe(time.perf_counter() - started)
                if not self._put(Prepared(done, view)):
                    return False
            return True
        started = time.perf_counter()
        with self._working():
            loaded = [guarded(ready, partial(load, ready, self._limits, keep=False)) for ready in files]
        read_s = (time.perf_counter() - started) / len(files)  # read + hash, per file
        for item in self._claim(loaded):
            if isinstance(item, Loaded):
                started = time.perf_counter()
                with self._working(), self._budget.reservation() as held:
                    done = guarded(item.source, partial(decode_loaded, item, self._limits, view, held))
                self._metrics.stage.labels("decode").observe(read_s + time.perf_counter() - started)
            else:
                done = item
            if isinstance(done, Held):
                done.source.close()  # another worker's file: it will open it itself
            if not self._put(Prepared(done, view)):
                return False
        return True

    def alive(self, stall_after_s: float) -> bool:
        """Every worker thread is running, and none has been stuck on one file for ``stall_after_s``."""
        now = time.monotonic()
        if self._threads_started and not all(t.is_alive() for t in self._threads):
            return self._stopping.is_set()
        return all(now - since < stall_after_s for since in list(self._busy.values()))

    def _put(self, prepared: Prepared) -> bool:
        """Queue a decoded file; waits while the queue is full, in files or in the bytes of the model
        inputs it holds (a tiled frame can be thousands of tiles): backpressure, bounded memory."""
        size = model_input_bytes(prepared.item)
        with self._queued_cond:
            while self._queued_bytes and self._queued_bytes + size > QUEUED_BYTES_MAX:
                if self._abandoned.is_set():
                    return False
                self._queued_cond.wait(PUT_TIMEOUT_S)
            self._queued_bytes += size
        while not self._abandoned.is_set():
            try:
                self._out.put(prepared, timeout=PUT_TIMEOUT_S)
                return True
            except queue.Full:
                continue
        return False

    def _claim(self, items: list[Loaded | Rejected | Vanished | Changed]) -> list[Loaded | Stage]:
        """Shared folder: claim the group's files in one transaction; only those won are decoded."""
        claims = self._claims
        assert claims is not None
        wanted = {
            i.sha256: safe_name(str(i.source.path)) for i in items if not isinstance(i, Vanished | Changed)
        }
        try:
            results = claims.claim_many(wanted)
        except (SQLAlchemyError, ValueError) as exc:  # ValueError: a value the database cannot take
            self._metrics.claims.labels("unavailable").inc(len(wanted))
            log.warning("claim.unavailable", files=len(wanted), error=db.brief(exc))
            results = None
        out: list[Loaded | Stage] = []
        for item in items:
            if isinstance(item, Vanished | Changed):
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


def model_input_bytes(item: Stage) -> int:
    """What a decoded file's model inputs weigh (its tiles); nothing for the other outcomes."""
    return int(item.tiles.nbytes) if isinstance(item, Decoded) else 0


def guarded(ready: ReadyFile, step: Callable[[], _T]) -> _T | Rejected | Vanished:
    """The per-image boundary: whatever goes wrong in ``step`` with one file is recorded against that
    file (an ``internal_error`` row), and the daemon goes on with the others."""
    try:
        return step()
    except Exception as exc:
        log.exception("decode.internal_error", file=ready.path.name)
        return _internal_error(ready, exc)


def _internal_error(ready: ReadyFile, exc: Exception) -> Rejected | Vanished:
    ready.close()
    try:
        st = ready.path.lstat()
    except OSError:
        return Vanished(ready)
    return Rejected(
        ready,
        identity_hash("internal", ready.path.name, st),
        st.st_size,
        "internal_error",
        f"{type(exc).__name__}: {exc}",
    )
