"""One micro-batch of decoded files through infer -> persist -> archive, and the account of every file.

Order of effects, for crash safety: the row is committed first, the file is moved after. A crash in
between leaves the file in incoming (or, between the archive's link and unlink, under both names); when it
is seen again its hash finds the committed row and the file is moved where that row says (``recovered``),
so there is never a second row, never a second copy and never a lost file. What happens to each file is
decided by the pure functions of plan.py; this module gathers what they need and carries out the effects.

Files arrive decoded (intake/workers.py). On a shared incoming folder a file another worker holds arrives
as ``Held``: it is left alone (``elsewhere``) and offered again once that lease could end.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from inspectd.core.records import (
    Changed,
    Decoded,
    Disposition,
    Held,
    Loaded,
    Outcome,
    Rejected,
    Scored,
    Stage,
    Status,
    Vanished,
)
from inspectd.core.tiles import View
from inspectd.daemon.commit import archive, plan
from inspectd.daemon.commit.infer import classify
from inspectd.daemon.commit.move import Mover
from inspectd.daemon.commit.persist import Persist
from inspectd.daemon.commit.plan import Candidate, Intent, Planned
from inspectd.daemon.commit.rows import NewRow, new_row
from inspectd.daemon.intake.budget import MemoryBudget
from inspectd.daemon.intake.decode import DecodeLimits, changed, decode_loaded
from inspectd.daemon.intake.workers import Prepared, guarded
from inspectd.daemon.metrics import Metrics
from inspectd.model.active import ActiveModel

CLAIM_UNAVAILABLE = "claim_unavailable"
NOT_MOVABLE = ("not_a_file", "symlink")  # rejections that are not regular files
Item = Decoded | Rejected


class Pipeline:
    def __init__(
        self,
        persist: Persist,
        mover: Mover,
        model: ActiveModel,
        limits: DecodeLimits,
        station: str,
        metrics: Metrics,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.persist = persist
        self.mover = mover
        self.model = model
        self.limits = limits
        self.station = station
        self.metrics = metrics
        self.budget = budget or MemoryBudget(1 << 62)

    def use(self, model: ActiveModel) -> None:
        """Serve ``model`` from the next batch on (files decoded for another view are decoded again)."""
        self.model = model

    def view(self) -> View:
        """How the active model looks at a frame: its input size, the ROI, its tiling."""
        return self.model.view

    def finish(self, batch: list[Prepared]) -> list[Outcome]:
        """Infer, persist and archive a batch of decoded files (every descriptor is closed after)."""
        try:
            return self._finish(batch)
        finally:
            for prepared in batch:
                prepared.item.source.close()
            # whatever became of them, these files are no longer in flight: their claims are not renewed
            self.persist.forget(h for p in batch if (h := getattr(p.item, "sha256", None)))

    def _finish(self, batch: list[Prepared]) -> list[Outcome]:
        view = self.view()
        stages = _one_name_per_file([self._for_view(p, view) for p in batch])
        self.metrics.batch_size.observe(len(batch))
        items = [d for d in stages if isinstance(d, Decoded | Rejected)]
        known = self.persist.known(i.sha256 for i in items)
        scored, items = self._infer(items, known)
        # Each file is taken away from its name before its row is committed (move.py): from then on no
        # writer reaching the name can change the bytes the row is about.
        staged = {id(i): self.mover.stage(i) for i in items}
        try:
            claimed = [i.sha256 for i in items]  # a file that changed is read again: its claim ends too
            items, stages = _drop_changed(items, stages, staged)
            world = self._world(known)
            roots = self.mover.destinations.roots()
            planned = plan.plan([_candidate(i, staged.get(id(i))) for i in items], roots, world)
            started = time.perf_counter()
            rows = [self._row(i, p, scored, world.now) for i, p in zip(items, planned, strict=True)]
            new = [r for r in rows if r is not None]
            inserted, refused, substitutes = self.persist.insert(new, claimed, roots.quarantine)
        except BaseException:  # not recorded: every file back under its name, untouched
            for held in staged.values():
                if held is not None:
                    archive.unstage(held)
            raise
        committed = time.monotonic()
        self.metrics.stage.labels("persist").observe(time.perf_counter() - started)
        self.metrics.db_up.set(1)
        planned = plan.moved(planned, substitutes)
        lost = [p.candidate.sha256 for p in planned if p.intent is Intent.RECORD]
        if lost := [h for h in lost if h not in inserted and h not in refused]:
            planned = plan.reroute(planned, self.persist.known(lost), world)
        outcomes = [_left(v, committed) for v in stages if isinstance(v, Vanished | Held | Changed)]
        started = time.perf_counter()
        for item, p in zip(items, planned, strict=True):
            disposition, row_id = plan.disposition(p, inserted, refused)
            done = self.mover.move(item, p, disposition, row_id, staged.get(id(item)))
            answer = scored.get(item.sha256) if done.disposition is Disposition.RECORDED else None
            outcome = _outcome(item, done.disposition, row_id, done.dest, answer, committed)
            outcomes.append(replace(outcome, look_again=done.look_again))
        self.metrics.stage.labels("archive").observe(time.perf_counter() - started)
        return outcomes

    def _infer(
        self, items: list[Item], known: dict[str, plan.KnownRow]
    ) -> tuple[dict[str, Scored], list[Item]]:
        """Score the images whose bytes have no row yet (each distinct content once)."""
        fresh: list[Decoded] = []
        seen: set[str] = set()
        for item in items:
            if isinstance(item, Decoded) and item.sha256 not in known and item.sha256 not in seen:
                fresh.append(item)
            seen.add(item.sha256)
        if not fresh:
            return {}, items
        started = time.perf_counter()
        scored, failed = classify(self.model, fresh)
        self.metrics.stage.labels("infer").observe(time.perf_counter() - started)
        return scored, [failed.get(i.sha256, i) if isinstance(i, Decoded) else i for i in items]

    def _for_view(self, prepared: Prepared, view: View) -> Stage:
        """A file decoded for a model that has since been replaced by one that looks at frames
        differently (input size, tiling) is decoded again for the new one, from the same descriptor."""
        item = prepared.item
        if prepared.view == view or not isinstance(item, Decoded):
            return item
        loaded = Loaded(item.source, item.sha256, None)
        with self.budget.reservation() as held:
            return guarded(item.source, partial(decode_loaded, loaded, self.limits, view, held))

    def _world(self, known: dict[str, plan.KnownRow]) -> plan.World:
        return plan.World(
            known=known,
            at_stored=lambda here, stored: not os.path.lexists(stored) or archive.same_file(here, stored),
            occupied=os.path.lexists,
            now=datetime.now(UTC),
        )

    def _row(self, item: Item, p: Planned, scored: dict[str, Scored], now: datetime) -> NewRow | None:
        if p.intent is not Intent.RECORD:
            return None
        answer = item if isinstance(item, Rejected) else scored.get(item.sha256)
        if answer is None:
            raise AssertionError("every new image is scored before its row is built")
        return new_row(answer, p.dest, self.station, now)


def _drop_changed(
    items: list[Item], stages: list[Stage], staged: dict[int, archive.Staged | None]
) -> tuple[list[Item], list[Stage]]:
    """A file written to since it was read is not final: put back under its name, no row for bytes that
    are no longer there, looked at again (``Changed``)."""
    moved_on = {id(i) for i in items if i.source.opened is not None and changed(i.source)}
    if not moved_on:
        return items, stages
    for i in items:
        if id(i) in moved_on and (held := staged.pop(id(i))) is not None:
            archive.unstage(held)
    kept = [i for i in items if id(i) not in moved_on]
    # by source: an image the model failed on is a new Rejected record for the same file
    sources = {id(i.source) for i in items if id(i) in moved_on}
    return kept, [Changed(s.source) if id(s.source) in sources else s for s in stages]


def _candidate(item: Item, staged: archive.Staged | None) -> Candidate:
    path = item.source.path
    here = staged.path if staged is not None and staged.path is not None else path
    status = Status.ERROR if isinstance(item, Rejected) else Status.OK
    movable = not (isinstance(item, Rejected) and item.reason in NOT_MOVABLE)
    return Candidate(item.sha256, path.name, here, status, movable)


def _left(stage: Vanished | Held | Changed, committed: float) -> Outcome:
    """A file left in incoming: gone before it was read, held by another worker, or not final."""
    reason = None
    if isinstance(stage, Held):
        reason = f"held by {stage.holder}" if stage.holder else CLAIM_UNAVAILABLE
    return Outcome(
        source=stage.source,
        sha256=stage.sha256 if isinstance(stage, Held) else None,
        disposition=_LEFT[type(stage)],
        latency_s=committed - stage.source.ready_at,
        reason=reason,
        look_again=isinstance(stage, Changed),
    )


_LEFT: dict[type, Disposition] = {
    Vanished: Disposition.VANISHED,
    Held: Disposition.ELSEWHERE,
    Changed: Disposition.CHANGED,
}


def _one_name_per_file(decoded: list[Stage]) -> list[Stage]:
    """One file seen under two names in a batch (written as ``cap.png``, then renamed ``cap_final.png``)
    is one file: the name it has now is kept, the other is a name it no longer has (vanished)."""
    names: dict[tuple[int, int], list[int]] = {}
    for n, item in enumerate(decoded):
        opened = item.source.opened
        if opened is not None and isinstance(item, Decoded | Rejected):
            names.setdefault((opened.id.dev, opened.id.ino), []).append(n)
    out = list(decoded)
    for (dev, ino), where in names.items():
        if len(where) < 2:
            continue
        current = [n for n in where if _names(out[n].source.path, dev, ino)] or where[-1:]
        for n in where:
            if n != current[0]:
                out[n] = Vanished(out[n].source)
    return out


def _names(path: Path, dev: int, ino: int) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _outcome(
    item: Decoded | Rejected,
    disposition: Disposition,
    row_id: int | None,
    dest: Path | None,
    scored: Scored | None,
    committed: float,
) -> Outcome:
    return Outcome(
        source=item.source,
        sha256=item.sha256,
        disposition=disposition,
        status=Status.ERROR if isinstance(item, Rejected) else Status.OK,
        verdict=scored.verdict if scored else None,
        score=scored.score if scored else None,
        destination=dest,
        row_id=row_id,
        reason=item.reason if isinstance(item, Rejected) else None,
        latency_s=committed - item.source.ready_at,
    )
