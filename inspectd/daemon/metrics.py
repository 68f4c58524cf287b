"""Metrics stage: Prometheus series, on a registry of their own, named to the Prometheus conventions
(``inspectd_`` prefix, base units, ``_total`` on counters only, histograms for durations).

Every series carries ``station="<[station] name>"``, so that stations sharing one Prometheus and one
dashboard can be told apart (and summed) whatever the scrape configuration says."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from inspectd import __version__
from inspectd.core.records import Disposition, Outcome
from inspectd.daemon.quality import Quality

disable_created_metrics()  # type: ignore[no-untyped-call] # the *_created series only add cardinality for dashboards

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SCORE_BUCKETS = (*(round(0.05 * i, 2) for i in range(1, 20)), 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _WithStation(Collector):
    """The series of ``inner``, each with the station label added."""

    def __init__(self, inner: CollectorRegistry, station: str) -> None:
        self.inner = inner
        self.station = station

    def collect(self) -> Iterator[Metric]:
        for family in self.inner.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                sample._replace(labels={"station": self.station, **sample.labels})
                for sample in family.samples
            ]
            yield labelled


class Metrics:
    def __init__(self, station: str) -> None:
        # Long by design: one declaration per series, in the order the dashboard shows them; no logic.
        r = CollectorRegistry(auto_describe=True)
        self.registry = CollectorRegistry()  # what /metrics serves: r's series, labelled with the station
        self.registry.register(_WithStation(r, station))
        self.info = Info("inspectd_build", "inspectd version", registry=r)
        self.model = Info("inspectd_model", "the active model version", registry=r)
        self.processed = Counter(
            "inspectd_images_processed",
            "images recorded, by verdict and status",
            ["verdict", "status"],
            registry=r,
        )
        self.errors = Counter(
            "inspectd_image_errors", "images recorded as errors, by reason", ["reason"], registry=r
        )
        self.dispositions = Counter(
            "inspectd_files", "files handled, by what happened to them", ["disposition"], registry=r
        )
        self.latency = Histogram(
            "inspectd_latency_seconds", "file ready to row committed", registry=r, buckets=LATENCY_BUCKETS
        )
        self.stage = Histogram(
            "inspectd_stage_duration_seconds",
            "time in each stage: decode per file (read, hash, decode), infer, persist and archive per batch",
            ["stage"],
            registry=r,
            buckets=STAGE_BUCKETS,
        )
        self.batch_size = Histogram(
            "inspectd_batch_size_images", "images per micro-batch", registry=r, buckets=BATCH_BUCKETS
        )
        self.score = Histogram(
            "inspectd_score",
            "calibrated model score, by verdict",
            ["verdict"],
            registry=r,
            buckets=SCORE_BUCKETS,
        )
        self.queue = Gauge(
            "inspectd_queue_depth_files", "files judged ready and not yet committed", registry=r
        )
        self.waiting = Gauge(
            "inspectd_incoming_pending_files", "files in incoming not yet judged complete", registry=r
        )
        self.last = Gauge(
            "inspectd_last_processed_timestamp_seconds", "when the last row was committed", registry=r
        )
        self.db_failures = Counter(
            "inspectd_db_write_failures", "database operations that failed", registry=r
        )
        self.db_retries = Counter(
            "inspectd_db_retries", "database operations retried after a failure", registry=r
        )
        self.incoming = Gauge(
            "inspectd_incoming_files", "files found in incoming at the last scan", registry=r
        )
        self.db_up = Gauge("inspectd_db_up", "1 when the last database operation succeeded", registry=r)
        self.ready = Gauge("inspectd_ready", "1 when model, database and watcher are all working", registry=r)
        self.model_failures = Counter(
            "inspectd_model_load_failures", "model versions refused at load", registry=r
        )
        self.model_ok = Gauge(
            "inspectd_model_load_ok", "0 after the last model (re)load was refused", registry=r
        )
        self.claims = Counter(
            "inspectd_claims",
            "shared incoming folder: claim attempts, by result (claimed, taken_over, held, unavailable)",
            ["result"],
            registry=r,
        )
        self.mqtt_published = Counter(
            "inspectd_mqtt_published", "result messages the broker acknowledged", registry=r
        )
        self.mqtt_failures = Counter(
            "inspectd_mqtt_failures",
            "MQTT failures, by kind (connect: a connection lost or refused; publish: a message not sent)",
            ["kind"],
            registry=r,
        )
        self.mqtt_backlog = Gauge(
            "inspectd_mqtt_backlog_results",
            "committed results not yet acknowledged by the broker",
            registry=r,
        )
        self.mqtt_connected = Gauge("inspectd_mqtt_connected", "1 while connected to the broker", registry=r)
        for kind in ("connect", "publish"):
            self.mqtt_failures.labels(kind)  # exported as 0 from the start: rates and alerts have a series
        self.quality = Quality(r, station)  # refreshed from the database by its own thread
        self.info.info({"version": __version__})

    def record(self, outcome: Outcome) -> None:
        self.dispositions.labels(outcome.disposition.value).inc()
        if outcome.disposition is not Disposition.RECORDED or outcome.status is None:
            return
        verdict = outcome.verdict.value if outcome.verdict else "none"
        self.processed.labels(verdict, outcome.status.value).inc()
        self.latency.observe(outcome.latency_s)
        if outcome.reason:
            self.errors.labels(outcome.reason).inc()
        if outcome.score is not None:
            self.score.labels(verdict).observe(outcome.score)
        self.last.set(time.time())
