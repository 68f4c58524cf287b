"""A bound on the bytes the decode stage holds at once: file contents read and the frames decoded.

``max_pixels`` alone does not bound memory (a 7000x7000 16-bit RGBA PNG of 381 KB decodes to 392 MB), and
several workers decode at once. Each decode reserves what it will hold before it holds it; a reservation
that does not fit waits until others finish, holding nothing meanwhile (so two growing reservations can
never wait on each other); one larger than the whole budget is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class OverBudget(Exception):
    """One image needs more than the whole budget."""


class MemoryBudget:
    def __init__(self, total_bytes: int) -> None:
        self.total = total_bytes
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    @contextmanager
    def reservation(self) -> Iterator[Reservation]:
        held = Reservation(self)
        try:
            yield held
        finally:
            held.release()

    def _resize(self, old: int, new: int) -> None:
        if new > self.total:
            raise OverBudget(f"{new} bytes is more than the budget of {self.total}")
        with self._cond:
            self._used -= old  # hold nothing while waiting
            while self._used + new > self.total:
                self._cond.wait()
            self._used += new
            if new < old:
                self._cond.notify_all()

    def _free(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()


class Reservation:
    """What one decode holds; grown as it learns how much it needs, released at the end."""

    def __init__(self, budget: MemoryBudget | None) -> None:
        self._budget = budget
        self.bytes = 0

    def ensure(self, n: int) -> None:
        """Hold at least ``n`` bytes in all (waits; raises OverBudget when ``n`` can never fit)."""
        if self._budget is None or n <= self.bytes:
            return
        self._budget._resize(self.bytes, n)
        self.bytes = n

    def shrink_to(self, n: int) -> None:
        """Hold only ``n`` bytes from now on (a temporary buffer was freed)."""
        if self._budget is None or n >= self.bytes:
            return
        self._budget._resize(self.bytes, n)
        self.bytes = n

    def release(self) -> None:
        if self._budget is not None and self.bytes:
            self._budget._free(self.bytes)
        self.bytes = 0


UNBOUNDED = Reservation(None)
