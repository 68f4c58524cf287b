"""Lease keeper, for a shared incoming folder: while this daemon is alive, its claims and its staged
files stay its own.

A claim's lease (claims.py) and a staged file's age (archive.recover_staged) are how the other workers
tell a crashed worker from a busy one. A busy one can hold a claim for longer than ``lease_s`` (a queue
behind a slow batch, a database outage): so every third of a lease this thread renews every lease the
worker holds and touches its ``.<token>.inspectd-alive`` file in incoming, as long as the main loop is
alive (``alive``: the systemd watchdog's own test). A hung daemon stops renewing and its files are taken
over once the lease has run out, as a crashed one's are.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from inspectd.core import db, logs
from inspectd.daemon.commit import archive
from inspectd.daemon.intake.claims import ClaimBook

log = logs.get("inspectd.daemon")


class Leases:
    def __init__(self, claims: ClaimBook, incoming: Path, token: str, alive: Callable[[], bool]) -> None:
        self.claims = claims
        self.incoming = incoming
        self.token = token
        self.alive = alive
        self.every_s = claims.lease_s / 3
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self.renew()
        self._thread = threading.Thread(target=self._run, name="leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """At a clean stop: nothing of this daemon's is in flight any more."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        archive.clear_alive(self.incoming, self.token)

    def renew(self) -> bool:
        """Renew once: False when the main loop is not alive (nothing renewed) or a renewal failed."""
        if not self.alive():
            return False
        try:
            archive.mark_alive(self.incoming, self.token)
            self.claims.renew()
        except (OSError, SQLAlchemyError) as exc:
            if not self._failing:
                log.warning("leases.renew_failed", error=db.brief(exc))
            self._failing = True
            return False
        if self._failing:
            log.info("leases.renewed")
        self._failing = False
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.renew()
