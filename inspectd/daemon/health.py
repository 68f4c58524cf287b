"""What /readyz reports, and liveness: the loop's heartbeat and the systemd watchdog pings it allows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from inspectd.core import logs
from inspectd.daemon.notify import Notifier

log = logs.get("inspectd.daemon")


@dataclass
class Health:
    """What /readyz reports; written by the pipeline thread, read by the HTTP threads."""

    model: bool = False
    database: bool = False
    watcher: bool = False
    decoders: bool = False

    def checks(self) -> dict[str, bool]:
        return {
            "model": self.model,
            "database": self.database,
            "watcher": self.watcher,
            "decoders": self.decoders,
        }


class Liveness:
    """The main loop beats; a thread pings systemd's watchdog only while the last beat is recent and the
    decode workers are alive, so a hung loop or dead workers get the process restarted."""

    def __init__(self, notifier: Notifier, stall_after_s: float) -> None:
        self.notifier = notifier
        self.stall_after_s = stall_after_s
        self._last_beat = time.monotonic()
        self._stop = threading.Event()

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def recent(self) -> bool:
        """The main loop beat within ``stall_after_s``: not hung."""
        return time.monotonic() - self._last_beat < self.stall_after_s

    def start(self, decoders_alive: Callable[[float], bool]) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return
        threading.Thread(
            target=self._ping, args=(interval, decoders_alive), name="sd-watchdog", daemon=True
        ).start()

    def stop(self) -> None:
        self._stop.set()

    def _ping(self, interval: float, decoders_alive: Callable[[float], bool]) -> None:
        stalled = False
        while not self._stop.wait(interval):
            decoding = decoders_alive(self.stall_after_s)
            if self.recent() and decoding:
                self.notifier.watchdog()
                stalled = False
            elif not stalled:
                stalled = True
                log.error(
                    "pipeline.stalled",
                    seconds=round(time.monotonic() - self._last_beat, 1),
                    decoders_ok=decoding,
                )
