"""The daemon's stages, built in data-flow order: readiness -> claims -> decode workers (started) ->
pipeline (infer, persist, move) -> batches."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from inspectd.core.config import Config
from inspectd.daemon.batches import Batches
from inspectd.daemon.commit.move import Destinations, Mover
from inspectd.daemon.commit.persist import Persist, Store
from inspectd.daemon.commit.pipeline import Pipeline
from inspectd.daemon.health import Health
from inspectd.daemon.intake.budget import MemoryBudget
from inspectd.daemon.intake.claims import ClaimBook
from inspectd.daemon.intake.decode import DecodeLimits
from inspectd.daemon.intake.readiness import Readiness
from inspectd.daemon.intake.workers import Intake
from inspectd.daemon.metrics import Metrics
from inspectd.model.active import ActiveModel


@dataclass(frozen=True)
class Stages:
    readiness: Readiness
    claims: ClaimBook | None
    store: Store
    pipeline: Pipeline
    intake: Intake  # started: stop it with abandon() and join()
    batches: Batches


def build_stages(
    cfg: Config,
    engine: Engine,
    model: ActiveModel,
    token: str,
    metrics: Metrics,
    health: Health,
    should_abort: Callable[[], bool],
) -> Stages:
    readiness = Readiness(
        cfg.paths.incoming, cfg.watch.extensions, cfg.watch.ignore, cfg.watch.settle_s, cfg.watch.stale_s
    )
    cores = os.cpu_count() or 1
    # one more than the cores: while a worker waits for the GIL another keeps its core decoding
    workers = cfg.decode.workers or cores + 1
    budget = MemoryBudget(cfg.decode.max_memory_mib << 20)
    claims = ClaimBook(engine, cfg.station.name, cfg.cluster.lease_s) if cfg.cluster.shared_incoming else None
    store = Store(engine, claims, cfg.station.name if cfg.mqtt.url else None)
    db_cfg = cfg.database
    persist = Persist(store, metrics, db_cfg.retry_initial_s, db_cfg.retry_max_s, should_abort)
    destinations = Destinations(cfg.paths.processed, cfg.paths.quarantine, cfg.paths.incoming, token)
    limits = DecodeLimits(cfg.decode.max_pixels, cfg.decode.max_file_bytes)
    pipeline = Pipeline(
        persist, Mover(destinations, persist, metrics), model, limits, cfg.station.name, metrics, budget
    )
    intake = Intake(
        readiness,
        limits,
        pipeline.view,
        workers,
        metrics,
        capacity=2 * max(cfg.batch.max_size, workers),
        claims=claims,
        claim_group=max(1, cfg.batch.max_size // cores),  # a group per decoding core
        budget=budget,
    )
    intake.start()
    health.decoders = True
    return Stages(
        readiness, claims, store, pipeline, intake, Batches(cfg, pipeline, readiness, metrics, health)
    )
