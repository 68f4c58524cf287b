"""The main loop's periodic jobs (scheduler.py runs them): rescan, stale claims, the idle database ping."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from inspectd.core import db, logs
from inspectd.core.config import Config
from inspectd.daemon.commit import archive
from inspectd.daemon.commit.persist import Store
from inspectd.daemon.health import Health
from inspectd.daemon.intake.claims import ClaimBook
from inspectd.daemon.intake.readiness import Readiness
from inspectd.daemon.metrics import Metrics

log = logs.get("inspectd.daemon")


def rescan(cfg: Config, readiness: Readiness, metrics: Metrics) -> None:
    """Files the watch missed (and, on a shared folder, those a crashed worker had taken, once its lease
    is over) become candidates."""
    if cfg.cluster.shared_incoming:
        token = archive.token_for(cfg.station.name)
        now = archive.folder_time(cfg.paths.incoming, token)
        staged = archive.recover_staged(cfg.paths.incoming, token, cfg.cluster.lease_s, own=False, now=now)
        for restored in staged:
            log.warning("rescan.restored", file=archive.safe_name(restored.name))
    found = readiness.scan()
    metrics.incoming.set(readiness.last_scan_total)
    if found:
        log.info("rescan.found", files=found)


def purge_stale_claims(claims: ClaimBook) -> None:
    try:
        purged = claims.purge_stale()
    except SQLAlchemyError as exc:
        log.warning("claims.purge_failed", error=db.brief(exc))
        return
    if purged:
        log.info("claims.purged", claims=purged)


def ping_database(store: Store, health: Health, metrics: Metrics) -> None:
    """Between bursts: keep /readyz and inspectd_db_up truthful about the database."""
    try:
        store.ping()
    except SQLAlchemyError as exc:
        if health.database:
            log.error("db.unavailable", error=db.brief(exc), state="idle")
        health.database = False
        metrics.db_up.set(0)
        return
    if not health.database:
        log.info("db.available")
    health.database = True
    metrics.db_up.set(1)
