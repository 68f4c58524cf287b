"""Readiness stage: decides when a file in the incoming folder is completely written.

- close-after-write and rename-into-the-folder events (from within it or from another folder) make a
  file ready at once;
- a bare ``created`` (an open that has not closed yet), a file found by a scan, and every event of the
  polling observer make it a candidate, ready once its size and mtime have not changed for ``settle_s``;
- a file seen being written (modify events) waits for its close; if none comes (a writer that died) it
  is taken once unchanged for ``stale_s``;
- hidden and temporary names (``.name.XXXXXX`` from rsync, ``*.part``, ``*.tmp``, ...) are never taken.

- an empty candidate is never complete by settling (FTP/SMB servers and wget create a file, then write it
  later): it waits for its close, its first write, or ``stale_s``.

A path is handed out once; it can come back only after ``release`` (the pipeline is done with it), so
events and rescans never make the same file be processed twice at the same time. An event for a path in
flight (a writer replacing the file under the same name) is not lost: the path is looked at again when
it is released. On a shared folder a file another worker holds is ``rest``ed: rescans skip it until that
worker's lease could have ended; a file whose move failed is rested too, so it is not read again and
again.

Events arrive on the observer's thread; ``take`` runs on the decode workers' threads.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path

from inspectd.core.records import ReadyFile
from inspectd.daemon.commit.archive import PRIVATE_SUFFIXES

Clock = Callable[[], float]


@dataclass(slots=True)
class _Candidate:
    writing: bool
    signature: tuple[int, int] | None  # (size, mtime_ns) at the last look; None: not looked at yet
    stable_since: float
    due: float  # when to look again: the end of its settle (or stale) time


class Readiness:
    def __init__(
        self,
        folder: Path,
        extensions: Iterable[str],
        ignore: Iterable[str],
        settle_s: float,
        stale_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self.folder = folder
        self._extensions = tuple(e.lower() for e in extensions)
        self._ignore = tuple(ignore)
        self._settle = settle_s
        self._stale = stale_s
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: dict[Path, _Candidate] = {}
        self._due: list[tuple[float, int, Path]] = []  # heap of looks to make; stale entries skipped
        self._seq = itertools.count()
        self._ready: deque[ReadyFile] = deque()
        self._taken: set[Path] = set()  # in _ready or being processed
        # in flight, and an event came for it meanwhile (True: a completion): look again after release
        self._dirty: dict[Path, bool] = {}
        self._resting: dict[Path, float] = {}  # held by another worker: not rescanned before this time
        self.last_scan_total = 0  # acceptable files seen in the folder by the last scan

    # --- filters -------------------------------------------------------------------------------------

    def accepts(self, path: Path) -> bool:
        name = path.name
        if path.parent != self.folder or any(fnmatchcase(name, pattern) for pattern in self._ignore):
            return False
        if name.endswith(PRIVATE_SUFFIXES):  # the archive's own private names, whatever ``ignore`` says
            return False
        return name.lower().endswith(self._extensions)

    # --- events (observer thread) --------------------------------------------------------------------

    def completed(self, path: Path) -> None:
        """A close-after-write, or a rename into the folder: the file is complete now."""
        if not self.accepts(path):
            return
        with self._cond:
            if path in self._taken:
                self._dirty[path] = True
                return
            if self._is_resting(path):
                return
            self._pending.pop(path, None)
            self._make_ready(path)

    def touched(self, path: Path, writing: bool) -> None:
        """A create (writing=False) or a modify (writing=True): look again at the end of its settle time."""
        if not self.accepts(path):
            return
        signature = _signature(path)
        if signature is None:  # already gone again (the delete event follows)
            return
        with self._cond:
            if path in self._taken:
                self._dirty.setdefault(path, False)
                return
            if self._is_resting(path):
                return
            candidate = self._pending.get(path)
            now = self._clock()
            if candidate is None:
                candidate = self._pending[path] = _Candidate(writing, signature, now, now)
            else:
                candidate.writing = candidate.writing or writing
                candidate.signature = signature
                candidate.stable_since = now
            self._schedule(path, candidate, now + self._needed(candidate))

    def gone(self, path: Path) -> None:
        """Moved out of the folder before we took it (a deleted file is dropped at its next look)."""
        with self._cond:
            self._pending.pop(path, None)

    # --- scans ---------------------------------------------------------------------------------------

    def scan(self) -> int:
        """Make every acceptable file in the folder a candidate (start-up, periodic reconciliation)."""
        try:
            entries = list(os.scandir(self.folder))
        except OSError:  # gone, or not readable right now: the watch check and the next scan tell
            return 0
        added = total = 0
        now = self._clock()
        with self._cond:
            self._resting = {p: until for p, until in self._resting.items() if until > now}
            for entry in entries:
                path = Path(entry.path)
                if not self.accepts(path):
                    continue
                total += 1
                if path in self._taken or path in self._pending or path in self._resting:
                    continue
                candidate = self._pending[path] = _Candidate(False, None, now, now)
                self._schedule(path, candidate, now)
                added += 1
        self.last_scan_total = total
        return added

    # --- the main loop -----------------------------------------------------------------------------

    def take(self, max_n: int, timeout: float) -> list[ReadyFile]:
        """Up to ``max_n`` ready files; waits up to ``timeout`` for the first one."""
        deadline = self._clock() + timeout
        with self._cond:
            while True:
                self._check_candidates()
                if self._ready:
                    return [self._ready.popleft() for _ in range(min(max_n, len(self._ready)))]
                now = self._clock()
                remaining = deadline - now
                if remaining <= 0:
                    return []
                # sleep until the first candidate could be complete (or a new event wakes us), so that
                # each file is taken when its own settle time ends instead of in groups on a poll tick
                if self._due:
                    remaining = min(remaining, max(self._due[0][0] - now, 0.001))
                self._cond.wait(remaining)

    def release(self, paths: Iterable[Path], again: Iterable[Path] = ()) -> None:
        """The pipeline is done with ``paths``; those in ``again`` (not final yet: written to while they
        were read, or replaced) and those an event came for meanwhile become candidates again."""
        now = self._clock()
        with self._cond:
            paths = list(paths)
            self._taken.difference_update(paths)
            events = {p: self._dirty.pop(p) for p in paths if p in self._dirty}
            # a resting path (its move failed) is not looked at again because of events: the archive's
            # own restore of it makes one
            for path in (set(again) | set(events)) - set(self._resting):
                if events.get(path) and path not in again:  # completed meanwhile: ready now
                    self._pending.pop(path, None)
                    self._make_ready(path)
                elif path not in self._pending:
                    candidate = self._pending[path] = _Candidate(False, _signature(path), now, now)
                    self._schedule(path, candidate, now + self._settle)

    def rest(self, paths: Iterable[Path], seconds: float) -> None:
        until = self._clock() + seconds
        with self._cond:
            for path in paths:
                self._resting[path] = until

    def queued(self) -> int:
        """Files ready and waiting for a decode worker to take them."""
        with self._cond:
            return len(self._ready)

    def backlog(self) -> tuple[int, int]:
        """(files waiting to be judged complete, files ready or being processed)."""
        with self._cond:
            return len(self._pending), len(self._taken)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- internals (lock held) -----------------------------------------------------------------------

    def _is_resting(self, path: Path) -> bool:
        """Held elsewhere, or its move failed: events do not bring it back before its time (the
        archive's own restore of a file makes one); the first scan after that time does."""
        until = self._resting.get(path)
        return until is not None and until > self._clock()

    def _make_ready(self, path: Path) -> None:
        if path in self._taken:
            return
        self._taken.add(path)
        self._ready.append(ReadyFile(path, self._clock(), datetime.now(UTC)))
        self._cond.notify_all()

    def _needed(self, candidate: _Candidate) -> float:
        return self._stale if candidate.writing else self._settle

    def _schedule(self, path: Path, candidate: _Candidate, due: float) -> None:
        first = not self._due or due < self._due[0][0]
        candidate.due = due
        heapq.heappush(self._due, (due, next(self._seq), path))
        if first:  # a waiting take() must shorten its sleep
            self._cond.notify_all()

    def _check_candidates(self) -> None:
        """Look at the candidates whose time has come (only those: a burst of thousands of creates costs
        one look per file, not one per file per event)."""
        now = self._clock()
        while self._due and self._due[0][0] <= now:
            due, _, path = heapq.heappop(self._due)
            candidate = self._pending.get(path)
            if candidate is None or candidate.due != due:  # taken, gone, or rescheduled since
                continue
            signature = _signature(path)
            if signature is None:
                del self._pending[path]
                continue
            if signature != candidate.signature:
                candidate.signature = signature
                candidate.stable_since = now
            # an empty file is not complete by settling: a writer may hold it open, about to write
            needed = self._stale if signature[0] == 0 else self._needed(candidate)
            if now - candidate.stable_since >= needed:
                del self._pending[path]
                self._make_ready(path)
            else:
                self._schedule(path, candidate, candidate.stable_since + needed)


def _signature(path: Path) -> tuple[int, int] | None:
    """(size, mtime) of the path itself (links not followed); None when it no longer exists."""
    try:
        st = path.lstat()
    except OSError:  # gone (or a name the filesystem refuses): nothing to take
        return None
    return st.st_size, st.st_mtime_ns
