"""The daemon's lifecycle: start up, run the pipeline loop, shut down cleanly.

Signals only set flags: SIGTERM/SIGINT ask for a stop (the decode workers take no new file; those they
already took are finished and committed; the process exits 0; a second signal, or the drain timeout,
abandons a batch whose database is unreachable, leaving its files untouched in incoming). SIGHUP asks
for the active model to be reloaded.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from watchdog.observers.api import BaseObserver

from inspectd import __version__, activations, archive, batcher, db, logs, memory, retry, signals
from inspectd.budget import MemoryBudget
from inspectd.claims import ClaimBook
from inspectd.config import EX_CONFIG, Config
from inspectd.decode import DecodeLimits, install_pixel_limit
from inspectd.httpserver import HttpServer, HttpStartError
from inspectd.infer import Inferencer, ModelLoadError, load_version
from inspectd.intake import Intake, Prepared
from inspectd.metrics import Metrics
from inspectd.notify import Notifier
from inspectd.persist import Store
from inspectd.pipeline import CLAIM_UNAVAILABLE, Destinations, Pipeline
from inspectd.readiness import Readiness
from inspectd.records import Disposition, Outcome
from inspectd.registry import ModelRegistry, RegistryError
from inspectd.retry import Aborted
from inspectd.watcher import start_observer

log = logs.get("inspectd.daemon")

TAKE_TIMEOUT_S = 0.25
STATUS_EVERY_S = 5.0
MODEL_POLL_S = 2.0
DB_PING_S = 5.0
PURGE_CLAIMS_S = 300.0
TRIM_AFTER_IDLE_S = 1.0
WATCH_CHECK_S = 1.0
RETRY_FAILED_S = 60.0  # a file that broke a batch (not one of its own errors) is tried again after this
_STUCK = (Disposition.DEFERRED, Disposition.UNRECORDED)


EX_SOFTWARE = 70  # sysexits.h: an unexpected error at start-up (systemd restarts on it)
EX_TEMPFAIL = 75  # a temporary condition: the listen address is still in use (systemd restarts on it)


def _os_error(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.metrics = Metrics(config.station.name)
        self.health = Health()
        self.registry = ModelRegistry(config.paths.models)
        self.should_exit = False
        self.force_exit = False
        self.reload_requested = False
        self._exit_requested_at: float | None = None
        self._last_beat = time.monotonic()
        self._stop_pings = threading.Event()
        self._processed = 0
        self._model_pointer: str | None = None  # the version last loaded or refused

    # --- signals: flags only -------------------------------------------------------------------------

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    def _on_reload(self, signum: int, _frame: FrameType | None) -> None:
        self.reload_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        for signum in signals.pending():  # arrived while the program was still importing (entry.py)
            (self._on_reload if signum == signal.SIGHUP else self._on_stop)(signum, None)

    # --- lifecycle -----------------------------------------------------------------------------------

    def run(self) -> int:
        self.install_signal_handlers()
        try:
            try:
                self.startup()
            except HttpStartError as exc:  # in use: maybe the previous process, still going; else config
                cause = exc.__cause__
                in_use = isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE
                raise StartupError(str(exc), EX_TEMPFAIL if in_use else EX_CONFIG) from None
            except OSError as exc:  # a folder that cannot be made, the inotify watch limit, ...
                raise StartupError(_os_error(exc), EX_CONFIG) from None
            except (ModelLoadError, RegistryError) as exc:
                raise StartupError(f"the active model cannot be used: {exc}", EX_CONFIG) from None
            except StartupError:
                raise
            except Exception as exc:  # noqa: BLE001 - the start-up boundary: one line, no traceback
                raise StartupError(f"{type(exc).__name__}: {exc}", EX_SOFTWARE) from None
        except StartupError as exc:
            log.error("startup.failed", error=" ".join(str(exc).split()), exit_code=exc.exit_code)
            self.notifier.send(status=f"failed to start: {exc}"[:200])
            self.shutdown()
            return exc.exit_code
        try:
            self.main_loop()
        finally:
            self.shutdown()
        return 0

    def startup(self) -> None:
        cfg = self.config
        started = time.monotonic()
        self.notifier.status("starting")
        for folder in (cfg.paths.incoming, cfg.paths.processed, cfg.paths.quarantine, cfg.paths.models):
            folder.mkdir(parents=True, exist_ok=True)
        token = archive.token_for(cfg.station.name)
        for restored in archive.recover_staged(cfg.paths.incoming, token, cfg.cluster.lease_s):
            log.warning("startup.restored", file=archive.safe_name(restored.name))
        install_pixel_limit(cfg.decode.max_pixels)
        memory.fix_mmap_threshold()
        self.engine = db.make_engine(cfg.database.url, cfg.database.busy_timeout_s)
        self._wait_for_schema(self.engine)
        inferencer = self._load_active_model()
        self.http = HttpServer(cfg.http.host, cfg.http.port, self.metrics.registry, self.health.checks)
        self.http.start()
        self.readiness = Readiness(
            cfg.paths.incoming, cfg.watch.extensions, cfg.watch.ignore, cfg.watch.settle_s, cfg.watch.stale_s
        )
        cores = os.cpu_count() or 1
        # one more than the cores: while a worker waits for the GIL another keeps its core decoding
        workers = cfg.decode.workers or cores + 1
        budget = MemoryBudget(cfg.decode.max_memory_mib << 20)
        claims = None
        if cfg.cluster.shared_incoming:
            claims = ClaimBook(self.engine, cfg.station.name, cfg.cluster.lease_s)
            self._purge_stale_claims(claims)
        self.pipeline = Pipeline(
            Store(self.engine, claims),
            inferencer,
            DecodeLimits(cfg.decode.max_pixels, cfg.decode.max_file_bytes),
            Destinations(cfg.paths.processed, cfg.paths.quarantine, cfg.paths.incoming, token),
            cfg.station.name,
            self.metrics,
            cfg.model,
            cfg.database.retry_initial_s,
            cfg.database.retry_max_s,
            should_abort=self._alive_should_abort,
            budget=budget,
        )
        self.intake = Intake(
            self.readiness,
            self.pipeline.limits,
            self.pipeline.view,
            workers,
            self.metrics,
            capacity=2 * max(cfg.batch.max_size, workers),
            claims=claims,
            claim_group=max(1, cfg.batch.max_size // cores),  # a group per decoding core
            budget=budget,
        )
        self.intake.start()
        self.health.decoders = True
        self.observer = self._watch()
        found = self.readiness.scan()
        self.metrics.incoming.set(self.readiness.last_scan_total)
        # Everything allocated so far lives as long as the process: keep the cyclic GC from walking it on
        # every full collection (those pauses showed up as slow batches).
        gc.collect()
        gc.freeze()
        self._start_watchdog_pings()
        self.metrics.ready.set(1)
        log.info(
            "daemon.ready",
            version=__version__,
            station=cfg.station.name,
            model=inferencer.version,
            incoming=str(cfg.paths.incoming),
            listen=cfg.http.listen,
            files_at_start=found,
            startup_s=round(time.monotonic() - started, 3),
        )
        self.notifier.ready(f"ready: model {inferencer.version}, {found} files waiting")

    def _watch(self) -> BaseObserver:
        """Watch the incoming folder (made again if it is missing); OSError at the inotify limits."""
        folder = self.config.paths.incoming
        folder.mkdir(parents=True, exist_ok=True)
        st = folder.stat()
        watch = self.config.watch
        observer = start_observer(self.readiness, watch.observer, watch.poll_interval_s)
        self._watched = (st.st_dev, st.st_ino)
        self.health.watcher = True
        return observer

    def _check_watch(self) -> None:
        """The folder watched is still the incoming folder (not removed, or removed and made again) and
        the observer still runs; else watch it anew and rescan it."""
        try:
            st = self.config.paths.incoming.stat()
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            current = None
        emitters = list(self.observer.emitters)  # an emitter stops once its folder is deleted
        watching = self.observer.is_alive() and bool(emitters) and all(e.is_alive() for e in emitters)
        if current == self._watched and watching:
            return
        log.error("watch.lost", folder=str(self.config.paths.incoming), folder_replaced=current is not None)
        self.health.watcher = False
        self.observer.stop()
        self.observer.join(timeout=2)
        try:
            self.observer = self._watch()
        except OSError as exc:
            log.error("watch.failed", error=_os_error(exc))
            return
        found = self.readiness.scan()
        log.info("watch.restored", files=found)

    def _wait_for_schema(self, engine: Engine) -> None:
        def failed(exc: SQLAlchemyError, retry_in_s: float) -> None:
            self.metrics.db_up.set(0)
            log.error("startup.db_unavailable", error=db.brief(exc), retry_in_s=round(retry_in_s, 2))
            self.notifier.status("waiting for the database")

        cfg = self.config.database
        try:
            retry.until_available(
                lambda: db.require_current_schema(engine),
                cfg.retry_initial_s,
                cfg.retry_max_s,
                failed,
                lambda: self.should_exit,
            )
        except db.SchemaMismatch as exc:
            raise StartupError(str(exc), EX_CONFIG) from None
        except Aborted:
            raise StartupError("stopped while waiting for the database", 0) from None
        self.health.database = True
        self.metrics.db_up.set(1)

    def _purge_stale_claims(self, claims: ClaimBook) -> None:
        try:
            purged = claims.purge_stale()
        except SQLAlchemyError as exc:
            log.warning("claims.purge_failed", error=db.brief(exc))
            return
        if purged:
            log.info("claims.purged", claims=purged)

    def _wanted_version(self) -> activations.Wanted:
        """Raises SQLAlchemyError when the database holds the answer and cannot be asked."""
        cfg = self.config
        return activations.wanted(cfg.model, self.engine, cfg.station.name, self.registry)

    def _load_active_model(self) -> Inferencer:
        try:
            self.registry.ensure_active()
            wanted = self._wanted_version()
            if wanted.version is None:
                raise RegistryError("no active version in the registry")
            inferencer = self._load_version(wanted.version)
        except SQLAlchemyError as exc:
            raise StartupError(f"cannot read the model promotions: {exc}", EX_CONFIG) from None
        except (ModelLoadError, RegistryError, OSError) as exc:
            self.metrics.model_failures.inc()
            raise StartupError(f"the active model cannot be used: {exc}", EX_CONFIG) from None
        self._model_pointer = wanted.version
        log.info("model.selected", version=wanted.version, source=wanted.source)
        self._set_model(inferencer)
        return inferencer

    def _load_version(self, version: str) -> Inferencer:
        """Load a version with every check the pipeline's batches need (every call size they use)."""
        return load_version(self.registry, version, self.config.model, self.config.batch.max_size)

    def _set_model(self, inferencer: Inferencer) -> None:
        self.health.model = True
        self.metrics.model_ok.set(1)
        self.metrics.model.info(
            {
                "version": inferencer.version,
                "threshold": f"{inferencer.meta.threshold:.4f}",
                "input_size": "x".join(map(str, inferencer.input_size)),
            }
        )

    def main_loop(self) -> None:
        cfg = self.config
        next_rescan = time.monotonic() + cfg.watch.rescan_interval_s
        next_purge = time.monotonic() + PURGE_CLAIMS_S
        next_status = next_model_poll = next_ping = next_watch = time.monotonic()
        max_wait_s = cfg.batch.max_wait_ms / 1000
        worked = False  # a batch finished since the heap was last trimmed
        idle_since: float | None = None
        while not self.should_exit:
            self._beat()
            now = time.monotonic()
            if self.reload_requested or now >= next_model_poll:
                self._poll_model(forced=self.reload_requested)
                self.reload_requested = False
                next_model_poll = now + MODEL_POLL_S
            if now >= next_watch:
                self._check_watch()
                self.health.decoders = self.intake.alive(cfg.systemd.stall_after_s)
                next_watch = now + WATCH_CHECK_S
            if now >= next_rescan:
                if cfg.cluster.shared_incoming:  # files a crashed worker had taken, once its lease is over
                    for restored in archive.recover_staged(
                        cfg.paths.incoming, self.pipeline.destinations.token, cfg.cluster.lease_s, own=False
                    ):
                        log.warning("rescan.restored", file=archive.safe_name(restored.name))
                found = self.readiness.scan()
                self.metrics.incoming.set(self.readiness.last_scan_total)
                if found:
                    log.info("rescan.found", files=found)
                next_rescan = now + cfg.watch.rescan_interval_s
            claims = self.pipeline.store.claims
            if claims is not None and now >= next_purge:
                self._purge_stale_claims(claims)
                next_purge = now + PURGE_CLAIMS_S
            batch = batcher.collect(self.intake, cfg.batch.max_size, max_wait_s, TAKE_TIMEOUT_S)
            if batch:
                self._finish(batch)
                worked = True
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif worked and now - idle_since >= TRIM_AFTER_IDLE_S:  # a burst is over, not a short gap
                memory.trim()
                worked = False
            if not batch and now >= next_ping:  # idle: keep /readyz truthful about the database
                self._ping_database()
                next_ping = now + DB_PING_S
            if now >= next_status:
                self._report_status()
                next_status = now + STATUS_EVERY_S
        self._drain()

    def _drain(self) -> None:
        """Intake stops; every file already taken is decoded, finished and committed."""
        self.intake.stop()
        while not self.intake.drained():
            self._beat()
            batch = batcher.collect(self.intake, self.config.batch.max_size, 0.0, 0.05)
            if batch and not self._finish(batch):
                self.intake.abandon()
                return

    def _finish(self, batch: list[Prepared]) -> bool:
        """False when the batch was abandoned (database unreachable at shutdown)."""
        paths = [p.item.source.path for p in batch]
        try:
            outcomes = self.pipeline.finish(batch)
        except Aborted:
            log.warning("batch.abandoned", files=len(batch), reason="database unreachable at shutdown")
            self.readiness.release(paths)
            return False
        except Exception:
            # not a file's fault (each file's own failures are recorded at the per-image boundary): try
            # each alone, so one file that breaks the batch cannot stop the others, and rest that file
            log.exception("batch.failed", files=len(batch))
            if len(batch) == 1:
                self.readiness.release(paths)
                self.readiness.rest(paths, RETRY_FAILED_S)
                self._update_queue_gauges()
                return True
            return all([self._finish([p]) for p in batch])
        held = [
            o.source.path
            for o in outcomes
            if o.disposition is Disposition.ELSEWHERE and o.reason != CLAIM_UNAVAILABLE
        ]
        if held:  # offered again by a rescan once the holder's lease could have run out
            self.readiness.rest(held, self.config.cluster.lease_s)
        stuck = [
            o.source.path
            for o in outcomes
            if not o.look_again
            and (o.disposition in _STUCK or (o.disposition is Disposition.RECORDED and o.destination is None))
        ]
        if stuck:  # tried again at the next rescan, not on every event (its own restore makes one)
            self.readiness.rest(stuck, 0.9 * self.config.watch.rescan_interval_s)
        self.readiness.release(paths, again=[o.source.path for o in outcomes if o.look_again])
        self._update_queue_gauges()
        self.health.database = True  # the pipeline has already set inspectd_db_up
        for outcome in outcomes:
            self._record(outcome)
        return True

    def _ping_database(self) -> None:
        try:
            self.pipeline.store.ping()
        except SQLAlchemyError as exc:
            if self.health.database:
                log.error("db.unavailable", error=db.brief(exc), state="idle")
            self.health.database = False
            self.metrics.db_up.set(0)
            return
        if not self.health.database:
            log.info("db.available")
        self.health.database = True
        self.metrics.db_up.set(1)

    def _record(self, outcome: Outcome) -> None:
        self.metrics.record(outcome)
        fields = {
            "file": archive.safe_name(outcome.source.path.name),
            "disposition": outcome.disposition.value,
            "sha256": outcome.sha256,
            "row_id": outcome.row_id,
            "latency_ms": round(outcome.latency_s * 1000, 1),
        }
        if outcome.status is not None:
            fields["status"] = outcome.status.value
        if outcome.verdict is not None:
            fields.update(verdict=outcome.verdict.value, score=round(outcome.score or 0.0, 4))
        if outcome.reason is not None:
            fields["reason"] = outcome.reason
        if outcome.destination is not None:
            fields["moved_to"] = str(outcome.destination)
        if outcome.disposition is Disposition.RECORDED:
            self._processed += 1
            (log.warning if outcome.reason else log.info)("image.processed", **fields)
        else:
            log.info("image.handled", **fields)

    def _poll_model(self, forced: bool) -> None:
        try:
            wanted = self._wanted_version()
        except SQLAlchemyError as exc:
            log.warning("model.poll_failed", error=db.brief(exc))
            return
        except (RegistryError, OSError, ValueError) as exc:  # a pointer file edited by hand, unreadable
            log.error("model.poll_failed", error=" ".join(str(exc).split()))
            return
        if forced or wanted.version != self._model_pointer:
            self.reload_model(wanted)

    def reload_model(self, wanted: activations.Wanted) -> None:
        version = wanted.version
        try:
            if version is None:
                raise RegistryError("no active version in the registry")
            inferencer = self._load_version(version)
        except (ModelLoadError, RegistryError, OSError, ValueError, RuntimeError) as exc:
            self.metrics.model_failures.inc()
            self.metrics.model_ok.set(0)
            log.error(
                "model.reload_refused",
                version=version,
                error=str(exc),
                keeping=self.pipeline.inferencer.version,
            )
            self._model_pointer = version
            return
        previous = self.pipeline.inferencer.version
        self.pipeline.inferencer = inferencer
        self._model_pointer = version
        self._set_model(inferencer)
        log.info("model.reloaded", version=inferencer.version, previous=previous, source=wanted.source)

    def shutdown(self) -> None:
        self.notifier.stopping("stopping: finishing the files already taken")
        log.info("daemon.stopping", processed=self._processed)
        self.metrics.ready.set(0)
        self._stop_pings.set()
        observer = getattr(self, "observer", None)
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
        intake = getattr(self, "intake", None)
        if intake is not None:
            intake.abandon()  # already drained after a normal stop
            intake.join(timeout=5)
        http = getattr(self, "http", None)
        if http is not None:
            http.stop()
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.dispose()
        log.info("daemon.stopped", processed=self._processed)

    # --- liveness ------------------------------------------------------------------------------------

    def _beat(self) -> None:
        self._last_beat = time.monotonic()

    def _alive_should_abort(self) -> bool:
        """Called while the pipeline waits for the database: still alive; give up only at shutdown."""
        self._beat()
        self.health.database = False
        if not self.should_exit:
            return False
        if self._exit_requested_at is None:
            self._exit_requested_at = time.monotonic()
        waited = time.monotonic() - self._exit_requested_at
        return self.force_exit or waited >= self.config.shutdown.drain_timeout_s

    def _start_watchdog_pings(self) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return
        stall = self.config.systemd.stall_after_s

        def ping() -> None:
            stalled = False
            while not self._stop_pings.wait(interval):
                intake = getattr(self, "intake", None)
                decoding = intake is None or intake.alive(stall)
                if time.monotonic() - self._last_beat < stall and decoding:
                    self.notifier.watchdog()
                    stalled = False
                elif not stalled:
                    stalled = True
                    log.error(
                        "pipeline.stalled",
                        seconds=round(time.monotonic() - self._last_beat, 1),
                        decoders_ok=decoding,
                    )

        threading.Thread(target=ping, name="sd-watchdog", daemon=True).start()

    def _update_queue_gauges(self) -> None:
        pending, claimed = self.readiness.backlog()
        self.metrics.waiting.set(pending)
        self.metrics.queue.set(claimed)

    def _report_status(self) -> None:
        pending, claimed = self.readiness.backlog()
        self._update_queue_gauges()
        self.notifier.status(
            f"{self._processed} images processed; {claimed} queued, {pending} settling; "
            f"model {self.pipeline.inferencer.version}"
        )
