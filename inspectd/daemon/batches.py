"""What the daemon does with a batch: finish it through the pipeline, then hand every file's outcome to
readiness (done, look again, rest a while), metrics and the log."""

from __future__ import annotations

from inspectd.core import logs
from inspectd.core.config import Config
from inspectd.core.records import Disposition, Outcome
from inspectd.core.retry import Aborted
from inspectd.daemon.commit import archive
from inspectd.daemon.commit.pipeline import CLAIM_UNAVAILABLE, Pipeline
from inspectd.daemon.health import Health
from inspectd.daemon.intake.readiness import Readiness
from inspectd.daemon.intake.workers import Prepared
from inspectd.daemon.metrics import Metrics

log = logs.get("inspectd.daemon")

RETRY_FAILED_S = 60.0  # a file that broke a batch (not one of its own errors) is tried again after this
_STUCK = (Disposition.DEFERRED, Disposition.UNRECORDED)


class Batches:
    def __init__(
        self, config: Config, pipeline: Pipeline, readiness: Readiness, metrics: Metrics, health: Health
    ) -> None:
        self.config = config
        self.health = health
        self.pipeline = pipeline
        self.readiness = readiness
        self.metrics = metrics
        self.processed = 0  # files recorded since start

    def finish(self, batch: list[Prepared]) -> bool:
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
                self.update_queue_gauges()
                return True
            return all([self.finish([p]) for p in batch])
        self._follow_up(outcomes)
        self.readiness.release(paths, again=[o.source.path for o in outcomes if o.look_again])
        self.update_queue_gauges()
        self.health.database = True  # the pipeline has already set inspectd_db_up
        for outcome in outcomes:
            self._record(outcome)
        return True

    def _follow_up(self, outcomes: list[Outcome]) -> None:
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

    def update_queue_gauges(self) -> None:
        pending, taken = self.readiness.backlog()
        self.metrics.waiting.set(pending)
        self.metrics.queue.set(taken)

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
            self.processed += 1
            (log.warning if outcome.reason else log.info)("image.processed", **fields)
        else:
            log.info("image.handled", **fields)
