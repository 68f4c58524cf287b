"""``inspectd serve``: the results API (and /healthz, /readyz) on ``[http] listen`` without a daemon, for
a machine that only reads the database. Signals only set a flag; the main thread waits on it."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError

from inspectd import web
from inspectd.core import db, logs
from inspectd.core.config import Config
from inspectd.daemon.http import HttpServer
from inspectd.daemon.startup import StartupError, startup_error
from inspectd.web import api
from inspectd.web.auth import Access

log = logs.get("inspectd.serve")


def serve(cfg: Config) -> int:
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    engine = db.make_engine(cfg.database.url, cfg.database.busy_timeout_s)

    def checks() -> dict[str, bool]:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError:
            return {"database": False}
        return {"database": True}

    try:
        try:
            db.require_current_schema(engine)
            routes = web.routes(engine, Access.of(cfg.http), cfg)
            http = HttpServer(cfg.http.host, cfg.http.port, CollectorRegistry(), checks, routes=routes)
            http.start()
        except Exception as exc:  # noqa: BLE001 - the start-up boundary: one line, no traceback
            raise startup_error(exc) from None
    except StartupError as exc:
        log.error("startup.failed", error=" ".join(str(exc).split()), exit_code=exc.exit_code)
        engine.dispose()
        return exc.exit_code
    log.info("serve.ready", listen=http.address, api=api.BASE)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        http.stop()
        engine.dispose()
        log.info("serve.stopped")
    return 0
