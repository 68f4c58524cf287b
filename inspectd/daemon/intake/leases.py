"""Lease keeper, for a shared incoming folder: while this daemon is alive, its claims and its staged
files stay its own.

A claim's lease (claims.py) and a staged file's age (archive.recover_staged) are how the other workers
tell a crashed worker from a busy one. A busy one can hold a claim for longer than ``lease_s`` (a queue
behind a slow batch, a database outage): so every third of a lease this thread renews every lease the
worker holds and touches its ``.<token>.inspectd-alive`` file in incoming, as long as the main loop is
alive (``alive``: the systemd watchdog's own test, the main loop's beat and every decode worker). Only
files still in flight are renewed (claims.py forgets a file once its batch is done, whatever became of
it). A hung daemon stops renewing and its files are taken over once the lease has run out, as a
crashed one's are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from inspectd.core import db, logs
from inspectd.daemon.commit import archive
from inspectd.daemon.intake.claims import ClaimBook

log = logs.get("inspectd.daemon")


RETRY_S = 2.0  # after a failed renewal, the next try comes this soon (not a whole interval later)


class Leases:
    def __init__(self, claims: ClaimBook, incoming: Path, token: str, alive: Callable[[], bool]) -> None:
        self.claims = claims
        self.incoming = incoming
        self.token = token
        self.alive = alive
        self.every_s = claims.lease_s / 3
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: set[str] = set()  # what failed at the last try: "mark", "claims"

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
        """Renew once: False when the main loop or a decode worker is not alive (nothing renewed), or
        when a renewal failed. The mark and the claims are renewed each on its own: a read-only incoming
        folder (no mark can be written there) does not stop the claims' renewal, nor a database outage
        the mark's."""
        if not self.alive():
            return False
        ok = self._try("mark", lambda: archive.mark_alive(self.incoming, self.token))
        return self._try("claims", self.claims.renew) and ok

    def _try(self, what: str, renew: Callable[[], object]) -> bool:
        try:
            renew()
        except (OSError, SQLAlchemyError) as exc:
            if what not in self._failing:
                log.warning("leases.renew_failed", renewing=what, error=db.brief(exc))
            self._failing.add(what)
            return False
        if what in self._failing:
            log.info("leases.renewed", renewing=what)
        self._failing.discard(what)
        return True

    def _run(self) -> None:
        """On a monotonic schedule: the next renewal is due an interval after the last one was due, not
        after it ended (a slow renewal does not push the next past the lease); sooner after a failure."""
        due = time.monotonic() + self.every_s
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            ok = self.renew()
            due = max(due + self.every_s, time.monotonic()) if ok else time.monotonic() + RETRY_S
