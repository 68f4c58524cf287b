"""The incoming folder's watch: started at start-up, checked every second, made again when lost."""

from __future__ import annotations

from watchdog.observers.api import BaseObserver

from inspectd.core import logs
from inspectd.core.config import Config
from inspectd.daemon.health import Health
from inspectd.daemon.intake.readiness import Readiness
from inspectd.daemon.intake.watcher import start_observer
from inspectd.daemon.startup import os_error

log = logs.get("inspectd.daemon")


class Watch:
    def __init__(self, config: Config, readiness: Readiness, health: Health) -> None:
        self.config = config
        self.readiness = readiness
        self.health = health
        self.observer: BaseObserver | None = None
        self._watched: tuple[int, int] | None = None

    def start(self) -> None:
        """Watch the incoming folder (made again if it is missing); OSError at the inotify limits."""
        folder = self.config.paths.incoming
        folder.mkdir(parents=True, exist_ok=True)
        st = folder.stat()
        watch = self.config.watch
        self.observer = start_observer(self.readiness, watch.observer, watch.poll_interval_s)
        self._watched = (st.st_dev, st.st_ino)
        self.health.watcher = True

    def check(self) -> None:
        """The folder watched is still the incoming folder (not removed, or removed and made again) and
        the observer still runs; else watch it anew and rescan it."""
        try:
            st = self.config.paths.incoming.stat()
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            current = None
        observer = self.observer
        emitters = list(observer.emitters) if observer is not None else []  # stops once its folder goes
        watching = observer is not None and observer.is_alive() and all(e.is_alive() for e in emitters)
        if current == self._watched and watching and emitters:
            return
        log.error("watch.lost", folder=str(self.config.paths.incoming), folder_replaced=current is not None)
        self.health.watcher = False
        self.stop(timeout=2)
        try:
            self.start()
        except OSError as exc:
            log.error("watch.failed", error=os_error(exc))
            return
        found = self.readiness.scan()
        log.info("watch.restored", files=found)

    def stop(self, timeout: float = 5) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=timeout)
            self.observer = None
