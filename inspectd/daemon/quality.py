"""Model quality a dashboard can show, from what operators label and what the model answers.

Refreshed from the database every ``REFRESH_S`` (a periodic job of the daemon):

- ``inspectd_labeled_results{window, model_version, verdict, label}``: this station's results labeled in
  the last day / week, so that precision and recall of the running model are Prometheus expressions
  (the dashboard's panels and the alert on operator disagreement use them);
- ``inspectd_score_drift{model_version}`` and ``inspectd_input_drift{statistic, model_version}``: the
  population stability index (core/drift.py) of the running version's latest scores, and of the
  brightness and contrast of what it saw, against its reference: its validation set, which retrain
  keeps in the version's metadata (``metrics.reference``); for a version without one (the bundled
  model), its first ``REFERENCE`` results on this station. Reported from ``MIN_SCORES`` recent results.
- ``inspectd_retrain_last{outcome}``: how the last ``inspectd retrain`` ended (core/retrain_status.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from inspectd.core import db, drift, logs, retrain_status
from inspectd.core.db import Result

log = logs.get("inspectd.daemon")

WINDOWS = {"1d": timedelta(days=1), "7d": timedelta(days=7)}
REFERENCE = 500  # without a stored reference: the version's first results on this station
RECENT = 500  # its latest
MIN_SCORES = 100  # fewer recent results: no drift reported (not enough to tell)
COLUMNS = {"score": Result.score, "brightness": Result.brightness, "contrast": Result.contrast}
Reference = Callable[[str], Mapping[str, Sequence[float]] | None]  # version -> binned distributions


class Quality:
    def __init__(self, registry: CollectorRegistry, station: str) -> None:
        self.station = station
        self.labeled = Gauge(
            "inspectd_labeled_results",
            "results labeled by an operator in the window, by the model's verdict and the human label",
            ["window", "model_version", "verdict", "label"],
            registry=registry,
        )
        self.retrain = Gauge(
            "inspectd_retrain_last",
            "1 for how the last inspectd retrain ended (promoted, refused, superseded, failed)",
            ["outcome"],
            registry=registry,
        )
        self.retrain_at = Gauge(
            "inspectd_retrain_last_finished_timestamp_seconds",
            "when the last inspectd retrain ended",
            registry=registry,
        )
        self.drift = Gauge(
            "inspectd_score_drift",
            "PSI of the running version's recent scores against its reference (validation set)",
            ["model_version"],
            registry=registry,
        )
        self.input_drift = Gauge(
            "inspectd_input_drift",
            "PSI of the brightness or contrast of recent inputs against the version's reference",
            ["statistic", "model_version"],
            registry=registry,
        )

    def start(
        self,
        engine: Engine,
        version: Callable[[], str],
        every_s: float,
        runs: Path | None = None,
        reference: Reference | None = None,
    ) -> None:
        """Refresh now and every ``every_s`` in a thread of its own (the queries scan the station's rows:
        never on the main loop)."""
        self._stop = threading.Event()

        def run() -> None:
            while True:
                self.refresh(engine, version(), runs=runs, reference=reference)
                if self._stop.wait(every_s):
                    return

        self._thread = threading.Thread(target=run, name="quality", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def refresh(
        self,
        engine: Engine,
        version: str,
        now: datetime | None = None,
        runs: Path | None = None,
        reference: Reference | None = None,
    ) -> None:
        """Recompute the gauges; a database error leaves them as they were (logged)."""
        now = now or datetime.now(UTC)
        if runs is not None and (status := retrain_status.read(runs)) is not None:
            for outcome in retrain_status.OUTCOMES:
                self.retrain.labels(outcome).set(1 if status["outcome"] == outcome else 0)
            self.retrain_at.set(float(status.get("finished_at") or 0))
        stored = reference(version) if reference is not None else None
        try:
            counts = {window: self._labeled(engine, now - span) for window, span in WINDOWS.items()}
            drifts = {kind: self._drift(engine, version, kind, stored) for kind in COLUMNS}
        except SQLAlchemyError as exc:
            log.warning("quality.refresh_failed", error=db.brief(exc))
            return
        self.labeled.clear()
        for window, rows in counts.items():
            for model_version, verdict, label, n in rows:
                self.labeled.labels(window, model_version or "", verdict or "", label).set(n)
        self.drift.clear()
        self.input_drift.clear()
        for kind, value in drifts.items():
            if value is None:
                continue
            if kind == "score":
                self.drift.labels(version).set(value)
            else:
                self.input_drift.labels(kind, version).set(value)

    def _labeled(self, engine: Engine, since: datetime) -> list[tuple[str | None, str | None, str, int]]:
        statement = (
            select(Result.model_version, Result.verdict, Result.label, func.count())
            .where(Result.station == self.station, Result.label.is_not(None), Result.labeled_at >= since)
            .group_by(Result.model_version, Result.verdict, Result.label)
        )
        with engine.connect() as conn:
            return [(v, d, lb or "", int(n)) for v, d, lb, n in conn.execute(statement)]

    def _drift(
        self, engine: Engine, version: str, kind: str, stored: Mapping[str, Sequence[float]] | None
    ) -> float | None:
        """PSI of the version's latest values of ``kind`` here against its reference; None: too few."""
        column = COLUMNS[kind]
        where = (Result.station == self.station, Result.model_version == version, column.is_not(None))
        base = select(column).where(*where)
        with engine.connect() as conn:
            if stored is not None and kind in stored:
                recent = [
                    float(v or 0.0) for (v,) in conn.execute(base.order_by(Result.id.desc()).limit(RECENT))
                ]
                if len(recent) < MIN_SCORES:
                    return None
                return drift.psi_shares(stored[kind], drift.shares(recent, kind))
            total = int(conn.execute(select(func.count()).select_from(Result).where(*where)).scalar_one())
            if total < REFERENCE + MIN_SCORES:
                return None
            first = [float(v or 0.0) for (v,) in conn.execute(base.order_by(Result.id).limit(REFERENCE))]
            latest = base.order_by(Result.id.desc()).limit(min(RECENT, total - REFERENCE))
            return drift.psi(first, [float(v or 0.0) for (v,) in conn.execute(latest)], kind)
