"""Readiness stage: decides when a file in the incoming folder is completely written.

- close-after-write and rename-into-the-folder events make a file ready at once;
- a bare ``created`` (a rename in from a sibling folder), a file found by a scan, and every event of the
  polling observer make it a candidate, ready once its size and mtime have not changed for ``settle_s``;
- a file seen being written (modify events) waits for its close; if none comes (a writer that died) it
  is taken once unchanged for ``stale_s``;
- hidden and temporary names (``.name.XXXXXX`` from rsync, ``*.part``, ``*.tmp``, ...) are never taken.

A path is handed out once; it can come back only after ``release`` (the pipeline is done with it), so
events and rescans never make the same file be processed twice at the same time. On a shared folder a
file another worker holds is ``rest``ed: rescans skip it until that worker's lease could have ended.

Events arrive on the observer's thread; ``take`` runs on the pipeline thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path

from inspectd.records import ReadyFile

Clock = Callable[[], float]


@dataclass(slots=True)
class _Candidate:
    writing: bool
    signature: tuple[int, int] | None  # (size, mtime_ns) at the last check
    stable_since: float


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
        self._ready: deque[ReadyFile] = deque()
        self._claimed: set[Path] = set()  # in _ready or being processed
        self._resting: dict[Path, float] = {}  # held by another worker: not rescanned before this time
        self.last_scan_total = 0  # acceptable files seen in the folder by the last scan

    # --- filters -------------------------------------------------------------------------------------

    def accepts(self, path: Path) -> bool:
        name = path.name
        if path.parent != self.folder or any(fnmatchcase(name, pattern) for pattern in self._ignore):
            return False
        return name.lower().endswith(self._extensions)

    # --- events (observer thread) --------------------------------------------------------------------

    def completed(self, path: Path) -> None:
        """A close-after-write, or a rename into the folder: the file is complete now."""
        if not self.accepts(path):
            return
        with self._cond:
            self._pending.pop(path, None)
            self._make_ready(path)

    def touched(self, path: Path, writing: bool) -> None:
        """A create (writing=False) or a modify (writing=True): re-check it until it is stable."""
        if not self.accepts(path):
            return
        with self._cond:
            if path in self._claimed:
                return
            candidate = self._pending.get(path)
            now = self._clock()
            if candidate is None:
                self._pending[path] = _Candidate(writing, None, now)
            else:
                candidate.writing = candidate.writing or writing
                candidate.stable_since = now
            self._cond.notify_all()

    def gone(self, path: Path) -> None:
        """Deleted or moved away before we took it."""
        with self._cond:
            self._pending.pop(path, None)

    # --- scans ---------------------------------------------------------------------------------------

    def scan(self) -> int:
        """Make every acceptable file in the folder a candidate (start-up, periodic reconciliation)."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
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
                if path in self._claimed or path in self._pending or path in self._resting:
                    continue
                self._pending[path] = _Candidate(False, None, now)
                added += 1
            if added:
                self._cond.notify_all()
        self.last_scan_total = total
        return added

    # --- pipeline thread -----------------------------------------------------------------------------

    def take(self, max_n: int, timeout: float) -> list[ReadyFile]:
        """Up to ``max_n`` ready files; waits up to ``timeout`` for the first one."""
        deadline = self._clock() + timeout
        with self._cond:
            while True:
                self._check_candidates()
                if self._ready:
                    return [self._ready.popleft() for _ in range(min(max_n, len(self._ready)))]
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return []
                wait = remaining if not self._pending else min(remaining, self._settle / 3)
                self._cond.wait(wait)

    def release(self, paths: Iterable[Path]) -> None:
        with self._cond:
            self._claimed.difference_update(paths)

    def rest(self, paths: Iterable[Path], seconds: float) -> None:
        until = self._clock() + seconds
        with self._cond:
            for path in paths:
                self._resting[path] = until

    def backlog(self) -> tuple[int, int]:
        """(files waiting to be judged complete, files ready or being processed)."""
        with self._cond:
            return len(self._pending), len(self._claimed)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- internals (lock held) -----------------------------------------------------------------------

    def _make_ready(self, path: Path) -> None:
        if path in self._claimed:
            return
        self._claimed.add(path)
        self._ready.append(ReadyFile(path, self._clock(), datetime.now(UTC)))
        self._cond.notify_all()

    def _check_candidates(self) -> None:
        now = self._clock()
        for path, candidate in list(self._pending.items()):
            try:
                st = path.lstat()
            except FileNotFoundError:
                del self._pending[path]
                continue
            signature = (st.st_size, st.st_mtime_ns)
            if signature != candidate.signature:
                candidate.signature = signature
                candidate.stable_since = now
                continue
            needed = self._stale if candidate.writing else self._settle
            if now - candidate.stable_since >= needed:
                del self._pending[path]
                self._make_ready(path)
