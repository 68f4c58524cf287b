"""Signals that arrive before the daemon is ready to handle them.

Importing the program (OpenCV, SQLAlchemy, LiteRT, ...) takes about two seconds, and until the daemon
installs its handlers Python's defaults apply: a SIGHUP (a ``systemctl reload`` right after a start)
would kill the process without a word, and systemd would take that for a clean exit. ``catch_early``,
run first thing by the entry point, records such signals instead; the daemon replays them
(``pending``) once its own handlers are in place.
"""

from __future__ import annotations

import signal
from types import FrameType

_pending: list[int] = []
EARLY = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


def _record(signum: int, _frame: FrameType | None) -> None:
    _pending.append(signum)


def catch_early() -> None:
    for signum in EARLY:
        signal.signal(signum, _record)


def pending() -> list[int]:
    """The signals recorded so far, oldest first (each reported once)."""
    out = list(_pending)
    _pending.clear()
    return out
