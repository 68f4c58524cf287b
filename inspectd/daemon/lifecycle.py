"""The daemon's lifecycle: start up, run the main loop, shut down cleanly.

Signals only set flags: SIGTERM/SIGINT ask for a stop (the decode workers take no new file; those they
already took are finished and committed; the process exits 0; a second signal, or the drain timeout,
abandons a batch whose database is unreachable, leaving its files untouched in incoming). SIGHUP asks
for the active model to be reloaded.

Start-up builds the components in data-flow order and registers each one's stop as it starts
(``contextlib.ExitStack``), so a failed start stops exactly what had started. A start-up failure is one
``startup.failed`` line and an exit code (startup.py).
"""

from __future__ import annotations

import gc
import signal
import time
from contextlib import ExitStack
from functools import partial
from types import FrameType

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from inspectd import __version__, web
from inspectd.core import db, logs, retry
from inspectd.core.config import Config
from inspectd.core.registry import ModelRegistry, RegistryError
from inspectd.core.retry import Aborted
from inspectd.daemon import jobs, memory, signals
from inspectd.daemon.commit import archive
from inspectd.daemon.health import Health, Liveness
from inspectd.daemon.http import HttpServer
from inspectd.daemon.intake import batcher
from inspectd.daemon.intake.decode import install_pixel_limit
from inspectd.daemon.intake.leases import Leases
from inspectd.daemon.metrics import Metrics
from inspectd.daemon.models import Models
from inspectd.daemon.notify import Notifier
from inspectd.daemon.publish.mqtt import Publisher
from inspectd.daemon.scheduler import Scheduler
from inspectd.daemon.stages import Stages, build_stages
from inspectd.daemon.startup import EX_CONFIG, StartupError, startup_error
from inspectd.daemon.watch import Watch
from inspectd.web.auth import Access

log = logs.get("inspectd.daemon")

TAKE_TIMEOUT_S = 0.25
STATUS_EVERY_S = 5.0
MODEL_POLL_S = 2.0
DB_PING_S = 5.0
PURGE_CLAIMS_S = 300.0
TRIM_AFTER_IDLE_S = 1.0
WATCH_CHECK_S = 1.0


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.metrics = Metrics(config.station.name)
        self.health = Health()
        self.liveness = Liveness(self.notifier, config.systemd.stall_after_s)
        self.models = Models(config, ModelRegistry(config.paths.models), self.metrics, self.health)
        self.should_exit = False
        self.force_exit = False
        self.reload_requested = False
        self._exit_requested_at: float | None = None
        self._stack = ExitStack()  # what has started, stopped in reverse order
        self.publisher: Publisher | None = None

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
            except Exception as exc:  # noqa: BLE001 - the start-up boundary: one line, no traceback
                raise startup_error(exc) from None
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
        """Storage, the model, HTTP, then the stages in data-flow order; ready when the folder is watched."""
        cfg = self.config
        started = time.monotonic()
        self.notifier.status("starting")
        token = self._prepare_folders()
        self.engine = db.make_engine(cfg.database.url, cfg.database.busy_timeout_s)
        self._stack.callback(self.engine.dispose)
        self._wait_for_schema(self.engine)
        model = self.models.start(self.engine)
        api = web.routes(self.engine, Access.of(cfg.http), cfg)
        http = HttpServer(cfg.http.host, cfg.http.port, self.metrics.registry, self.health.checks, routes=api)
        http.start()
        self._stack.callback(http.stop)
        self._stages(
            build_stages(cfg, self.engine, model, token, self.metrics, self.health, self._alive_should_abort)
        )
        if self.claims is not None:
            jobs.purge_stale_claims(self.claims)
            stall = cfg.systemd.stall_after_s
            intake = self.intake

            def alive() -> bool:  # the watchdog's own test: the loop beats, every decode worker moves
                return self.liveness.recent() and intake.alive(stall)

            leases = Leases(self.claims, cfg.paths.incoming, token, alive)
            leases.start()
            self._stack.callback(leases.stop)
        if cfg.mqtt.url is not None:
            pipeline = self.pipeline
            self.publisher = Publisher(
                cfg.mqtt, cfg.station.name, self.engine, self.metrics, lambda: pipeline.model.version
            )
            self.publisher.start()
            self._stack.callback(self.publisher.stop)
        pipeline = self.pipeline
        registry = self.models.registry
        self.metrics.quality.start(
            self.engine,
            lambda: pipeline.model.version,
            cfg.model.quality_refresh_s,
            cfg.paths.runs,
            lambda version: _reference(registry, version),
        )
        self._stack.callback(self.metrics.quality.stop)
        self.watch = Watch(cfg, self.readiness, self.health)
        self.watch.start()
        self._stack.callback(self.watch.stop)
        found = self.readiness.scan()
        self.metrics.incoming.set(self.readiness.last_scan_total)
        # Everything allocated so far lives as long as the process: keep the cyclic GC from walking it on
        # every full collection (those pauses showed up as slow batches).
        gc.collect()
        gc.freeze()
        self.liveness.start(self.intake.alive)
        self.metrics.ready.set(1)
        log.info(
            "daemon.ready",
            version=__version__,
            station=cfg.station.name,
            model=model.version,
            incoming=str(cfg.paths.incoming),
            listen=cfg.http.listen,
            files_at_start=found,
            startup_s=round(time.monotonic() - started, 3),
        )
        self.notifier.ready(f"ready: model {model.version}, {found} files waiting")

    def _prepare_folders(self) -> str:
        """Make the folders; put back under their names the files an earlier run had taken but not
        finished. Returns this daemon's token (its private names in incoming)."""
        cfg = self.config
        for folder in (cfg.paths.incoming, cfg.paths.processed, cfg.paths.quarantine, cfg.paths.models):
            folder.mkdir(parents=True, exist_ok=True)
        token = archive.token_for(cfg.station.name)
        for restored in archive.recover_staged(cfg.paths.incoming, token, cfg.cluster.lease_s):
            log.warning("startup.restored", file=archive.safe_name(restored.name))
        install_pixel_limit(cfg.decode.max_pixels)
        memory.fix_mmap_threshold()
        return token

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

    def main_loop(self) -> None:
        cfg = self.config
        now = time.monotonic()
        periodic = Scheduler()
        periodic.every("model", MODEL_POLL_S, lambda: self._poll_model(forced=False), now)
        periodic.every("watch", WATCH_CHECK_S, self._check_watch, now)
        rescan = partial(jobs.rescan, cfg, self.readiness, self.metrics)
        periodic.every("rescan", cfg.watch.rescan_interval_s, rescan, now + cfg.watch.rescan_interval_s)
        if (claims := self.claims) is not None:
            periodic.every(
                "claims", PURGE_CLAIMS_S, partial(jobs.purge_stale_claims, claims), now + PURGE_CLAIMS_S
            )
        idle_jobs = Scheduler()  # only between bursts
        idle_jobs.every(
            "ping", DB_PING_S, partial(jobs.ping_database, self.store, self.health, self.metrics), now
        )
        status = Scheduler()
        status.every("status", STATUS_EVERY_S, self._report_status, now)
        max_wait_s = cfg.batch.max_wait_ms / 1000
        worked = False  # a batch finished since the heap was last trimmed
        idle_since: float | None = None
        while not self.should_exit:
            self.liveness.beat()
            now = time.monotonic()
            if self.reload_requested:  # SIGHUP: now, and it counts as the poll (one load, not two)
                self.reload_requested = False
                self._poll_model(forced=True)
                periodic.ran("model", now)
            periodic.due(now)
            batch = batcher.collect(self.intake, cfg.batch.max_size, max_wait_s, TAKE_TIMEOUT_S)
            if batch:
                self.batches.finish(batch)
                if self.publisher is not None:
                    self.publisher.wake()
                worked = True
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif worked and now - idle_since >= TRIM_AFTER_IDLE_S:  # a burst is over, not a short gap
                memory.trim()
                worked = False
            if not batch:  # idle: keep /readyz truthful about the database
                idle_jobs.due(now)
            status.due(now)
        self._drain()

    def _drain(self) -> None:
        """Intake stops; every file already taken is decoded, finished and committed."""
        self.intake.stop()
        while not self.intake.drained():
            self.liveness.beat()
            batch = batcher.collect(self.intake, self.config.batch.max_size, 0.0, 0.05)
            if batch and not self.batches.finish(batch):
                self.intake.abandon()
                return

    def shutdown(self) -> None:
        batches = getattr(self, "batches", None)  # None when the start failed before the pipeline
        processed = batches.processed if batches is not None else 0
        self.notifier.stopping("stopping: finishing the files already taken")
        log.info("daemon.stopping", processed=processed)
        self.metrics.ready.set(0)
        self.liveness.stop()
        self._stack.close()
        log.info("daemon.stopped", processed=processed)

    # --- periodic jobs -------------------------------------------------------------------------------

    def _poll_model(self, forced: bool) -> None:
        model = self.models.poll(self.engine, self.pipeline.model, forced)
        if model is not None:
            self.pipeline.use(model)

    def _check_watch(self) -> None:
        self.watch.check()
        self.health.decoders = self.intake.alive(self.config.systemd.stall_after_s)

    def _report_status(self) -> None:
        pending, taken = self.readiness.backlog()
        self.batches.update_queue_gauges()
        self.notifier.status(
            f"{self.batches.processed} images processed; {taken} queued, {pending} settling; "
            f"model {self.pipeline.model.version}"
        )

    def _stages(self, stages: Stages) -> None:
        self.readiness, self.claims, self.store = stages.readiness, stages.claims, stages.store
        self.pipeline, self.intake, self.batches = stages.pipeline, stages.intake, stages.batches
        self._stack.callback(self._stop_intake)

    # --- liveness ------------------------------------------------------------------------------------

    def _alive_should_abort(self) -> bool:
        """Called while the pipeline waits for the database: still alive; give up only at shutdown."""
        self.liveness.beat()
        self.health.database = False
        if not self.should_exit:
            return False
        if self._exit_requested_at is None:
            self._exit_requested_at = time.monotonic()
        waited = time.monotonic() - self._exit_requested_at
        return self.force_exit or waited >= self.config.shutdown.drain_timeout_s

    def _stop_intake(self) -> None:
        self.intake.abandon()  # already drained after a normal stop
        self.intake.join(timeout=5)


def _reference(registry: ModelRegistry, version: str) -> dict[str, list[float]] | None:
    """The binned validation-set distributions a version keeps (retrain), or None (the bundled model)."""
    try:
        stored = registry.read_meta(version).metrics.get("reference")
    except (RegistryError, OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None
