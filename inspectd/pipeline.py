"""One micro-batch of decoded files through infer -> persist -> archive, and the account of every file.

Order of effects, for crash safety: the row is committed first, the file is moved after. A crash in
between leaves the file in incoming (or, between the archive's link and unlink, under both names); when it
is seen again its hash finds the committed row and the file is moved where that row says (``recovered``),
so there is never a second row, never a second copy and never a lost file.

Files arrive decoded (intake.py). On a shared incoming folder a file another worker holds arrives as
``Held``: it is left alone (``elsewhere``) and offered again once that lease could end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from inspectd import archive, db, logs, retry
from inspectd.budget import MemoryBudget
from inspectd.config import ModelConfig
from inspectd.decode import DecodeLimits, changed, decode_loaded
from inspectd.infer import Inferencer
from inspectd.intake import Prepared, guarded
from inspectd.metrics import Metrics
from inspectd.persist import KnownRow, Store
from inspectd.records import (
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
from inspectd.tiles import View, view_for

log = logs.get("inspectd.pipeline")
CLAIM_UNAVAILABLE = "claim_unavailable"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Destinations:
    processed: Path
    quarantine: Path
    incoming: Path | None = None  # its own .quarantine takes what cannot cross filesystems
    token: str = "0" * 8  # this daemon's private names in incoming (archive.token_for)

    def local_quarantine(self) -> Path | None:
        """Where a folder or special file is quarantined: ``quarantine`` when it is on incoming's
        filesystem (a rename), else ``<incoming>/.quarantine`` (such things are never copied)."""
        if self.incoming is None:
            return None
        try:
            if self.incoming.stat().st_dev == self.quarantine.stat().st_dev:
                return None
        except OSError:
            pass
        return self.incoming / archive.LOCAL_QUARANTINE


@dataclass(frozen=True, slots=True)
class _Planned:
    """A file's new row (None when its hash is known), its score, and where it goes after the commit."""

    item: Decoded | Rejected
    scored: Scored | None
    row: dict[str, Any] | None
    dest: Path
    known: KnownRow | None


NOT_MOVABLE = ("not_a_file", "symlink")  # rejections that are not regular files


def _held_reason(item: Vanished | Held | Changed) -> str | None:
    if not isinstance(item, Held):
        return None
    return f"held by {item.holder}" if item.holder else CLAIM_UNAVAILABLE


class Pipeline:
    def __init__(
        self,
        store: Store,
        inferencer: Inferencer,
        limits: DecodeLimits,
        destinations: Destinations,
        station: str,
        metrics: Metrics,
        model_cfg: ModelConfig,
        retry_initial_s: float,
        retry_max_s: float,
        should_abort: Callable[[], bool] = lambda: False,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.store = store
        self.inferencer = inferencer
        self.limits = limits
        self.destinations = destinations
        self.station = station
        self.metrics = metrics
        self.model_cfg = model_cfg  # the station's [model]: threshold override, ROI, tiling, reduce
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.should_abort = should_abort
        self.budget = budget or MemoryBudget(1 << 62)

    def view(self) -> View:
        """How the active model looks at a frame: its input size, the ROI, its tiling."""
        return view_for(self.inferencer.meta, self.model_cfg)

    def finish(self, batch: list[Prepared]) -> list[Outcome]:
        """Infer, persist and archive a batch of decoded files (every descriptor is closed after)."""
        try:
            return self._finish(batch)
        finally:
            for prepared in batch:
                prepared.item.source.close()

    def _finish(self, batch: list[Prepared]) -> list[Outcome]:
        view = self.view()
        decoded = [self._for_view(p, view) for p in batch]
        self.metrics.batch_size.observe(len(batch))

        decoded = _one_name_per_file(decoded)
        items = [d for d in decoded if isinstance(d, Decoded | Rejected)]
        known = self._with_retry(lambda: self.store.known(i.sha256 for i in items))
        fresh: list[Decoded] = []
        seen: set[str] = set()
        for item in items:
            if isinstance(item, Decoded) and item.sha256 not in known and item.sha256 not in seen:
                fresh.append(item)
            seen.add(item.sha256)

        started = time.perf_counter()
        scored, failed = self._classify(fresh)
        items = [failed.get(i.sha256, i) if isinstance(i, Decoded) else i for i in items]
        if fresh:
            self.metrics.stage.labels("infer").observe(time.perf_counter() - started)

        # Each file is taken away from its name before its row is committed (archive.stage): from then
        # on no writer reaching the name can change the bytes the row is about; and a file written to
        # since it was read is not final: no row for bytes that are no longer there.
        staged = {id(i): self._stage(i) for i in items}
        try:
            moved_on = {id(i) for i in items if i.source.opened is not None and changed(i.source)}
            if moved_on:
                for i in items:
                    if id(i) in moved_on and (held := staged.pop(id(i))) is not None:
                        archive.unstage(held)
                items = [i for i in items if id(i) not in moved_on]
                decoded = [Changed(i.source) if id(i) in moved_on else i for i in decoded]

            plans = self._plan(items, scored, known, staged)
            started = time.perf_counter()
            inserted, refused, moved = self._persist(plans, [i.sha256 for i in items])
        except BaseException:  # not recorded: every file back under its name, untouched
            for held in staged.values():
                if held is not None:
                    archive.unstage(held)
            raise
        plans = [replace(p, dest=moved[p.item.sha256]) if p.item.sha256 in moved else p for p in plans]
        committed = time.monotonic()
        self.metrics.stage.labels("persist").observe(time.perf_counter() - started)
        self.metrics.db_up.set(1)
        plans = self._reroute(plans, inserted, refused)

        outcomes = [
            Outcome(
                source=v.source,
                sha256=v.sha256 if isinstance(v, Held) else None,
                disposition=_DISPOSITION[type(v)],
                status=None,
                verdict=None,
                score=None,
                destination=None,
                row_id=None,
                reason=_held_reason(v),
                latency_s=committed - v.source.ready_at,
                look_again=isinstance(v, Changed),
            )
            for v in decoded
            if isinstance(v, Vanished | Held | Changed)
        ]
        started = time.perf_counter()
        outcomes += [
            self._archive(plan, inserted, refused, committed, staged.get(id(plan.item))) for plan in plans
        ]
        self.metrics.stage.labels("archive").observe(time.perf_counter() - started)
        return outcomes

    def _for_view(self, prepared: Prepared, view: View) -> Stage:
        """A file decoded for a model that has since been replaced by one that looks at frames
        differently (input size, tiling) is decoded again for the new one, from the same descriptor."""
        item = prepared.item
        if prepared.view == view or not isinstance(item, Decoded):
            return item
        loaded = Loaded(item.source, item.sha256, None)
        with self.budget.reservation() as held:
            return guarded(item.source, partial(decode_loaded, loaded, self.limits, view, held))

    def _classify(self, fresh: list[Decoded]) -> tuple[dict[str, Scored], dict[str, Rejected]]:
        """Score the batch in one call; if that fails, score image by image so one bad input is recorded
        as its own error and the others still get their verdicts. A score that is not a number is an
        inference failure of that image, never a row."""
        try:
            results: list[Scored | Rejected] = list(
                self.inferencer.classify(fresh, self.model_cfg.threshold, self.model_cfg.tile_reduce)
            )
        except (RuntimeError, ValueError) as exc:
            log.error("infer.batch_failed", images=len(fresh), error=str(exc))
            results = [self._classify_one(image) for image in fresh]
        scored: dict[str, Scored] = {}
        failed: dict[str, Rejected] = {}
        for result in results:
            if isinstance(result, Rejected):
                failed[result.sha256] = result
            elif np.isfinite(result.score):
                scored[result.image.sha256] = result
            else:
                failed[result.image.sha256] = _inference_failed(
                    result.image, f"the model gave a non-finite score ({result.score})"
                )
        return scored, failed

    def _classify_one(self, image: Decoded) -> Scored | Rejected:
        try:
            return self.inferencer.classify([image], self.model_cfg.threshold, self.model_cfg.tile_reduce)[0]
        except (RuntimeError, ValueError) as exc:
            return _inference_failed(image, str(exc))

    # --- planning ------------------------------------------------------------------------------------

    def _plan(
        self,
        items: list[Decoded | Rejected],
        scored: dict[str, Scored],
        known: dict[str, KnownRow],
        staged: dict[int, archive.Staged | None],
    ) -> list[_Planned]:
        now = datetime.now(UTC)
        taken: set[Path] = set()
        plans: list[_Planned] = []
        claimed: set[str] = set()
        for item in items:
            path = item.source.path
            held = staged.get(id(item))
            here = held.path if held is not None and held.path is not None else path
            row_known = known.get(item.sha256)
            stored = Path(row_known.stored_path) if row_known is not None else None
            if stored is not None and (not os.path.lexists(stored) or archive.same_file(here, stored)):
                # committed by an earlier run that stopped before (or halfway through) the move: finish it
                plans.append(_Planned(item, None, None, stored, row_known))
                continue
            if row_known is not None or item.sha256 in claimed:
                root = self._root_for(item, row_known.status if row_known else self._status(item))
                dest = archive.plan(root, now, path.name, item.sha256, taken)
                plans.append(_Planned(item, None, None, dest, row_known))
                continue
            claimed.add(item.sha256)
            status = self._status(item)
            dest = archive.plan(self._root_for(item, status), now, path.name, item.sha256, taken)
            score = scored.get(item.sha256)
            plans.append(_Planned(item, score, self._row(score or item, dest, now), dest, None))
        return plans

    @staticmethod
    def _status(item: Decoded | Rejected) -> str:
        return Status.ERROR.value if isinstance(item, Rejected) else Status.OK.value

    def _root_for(self, item: Decoded | Rejected, status: str) -> Path:
        if status != Status.ERROR:
            return self.destinations.processed
        if isinstance(item, Rejected) and item.reason in NOT_MOVABLE:
            local = self.destinations.local_quarantine()
            if local is not None:
                return local
        return self.destinations.quarantine

    def _row(self, item: Scored | Rejected | Decoded, dest: Path, now: datetime) -> dict[str, Any]:
        if isinstance(item, Decoded):
            raise AssertionError("every new image is scored before its row is built")
        source = item.image.source if isinstance(item, Scored) else item.source
        row: dict[str, Any] = {
            "original_name": archive.safe_name(source.path.name),
            "stored_path": archive.safe_name(str(dest)),
            "received_at": source.received_at,
            "processed_at": now,
            "latency_s": max(0.0, time.monotonic() - source.ready_at),
            "station": self.station,
            "model_version": None,
            "threshold": None,
            "score": None,
            "verdict": None,
            "error_reason": None,
            "box_x": None,
            "box_y": None,
            "box_w": None,
            "box_h": None,
        }
        if isinstance(item, Scored):
            image = item.image
            row.update(
                content_hash=image.sha256,
                size_bytes=image.size_bytes,
                width=image.width,
                height=image.height,
                status=Status.OK.value,
                model_version=item.model_version,
                threshold=item.threshold,
                score=item.score,
                verdict=item.verdict.value,
            )
            if item.box is not None:
                row.update(zip(("box_x", "box_y", "box_w", "box_h"), item.box, strict=True))
        else:
            row.update(
                content_hash=item.sha256,
                size_bytes=item.size_bytes,
                width=item.width,
                height=item.height,
                status=Status.ERROR.value,
                error_reason=f"{item.reason}: {item.detail}",
            )
        return row

    # --- persist -------------------------------------------------------------------------------------

    def _persist(
        self, plans: list[_Planned], hashes: list[str]
    ) -> tuple[dict[str, int], set[str], dict[str, Path]]:
        """Insert the batch's new rows in one transaction. When the database refuses the batch for good
        (not an outage: a value it cannot store), each row is tried alone, a refused row is replaced by
        an error row saying why, and a file whose error row is refused too is left unrecorded in
        incoming (``refused``); the rest of the batch is recorded either way. Also returns where the
        files of the error rows go (quarantine)."""
        rows = [p.row for p in plans if p.row is not None]
        try:
            return self._with_retry(lambda: self.store.insert(rows, hashes)), set(), {}
        except PermanentError as exc:
            log.error("db.batch_refused", rows=len(rows), error=db.brief(exc.cause))
        inserted: dict[str, int] = {}
        refused: set[str] = set()
        moved: dict[str, Path] = {}
        for row in rows:
            substitute = _refused_row(row, self.destinations.quarantine)
            for attempt in (row, substitute):
                try:
                    inserted.update(self._with_retry(partial(self.store.insert, [attempt])))
                    if attempt is substitute:
                        moved[row["content_hash"]] = Path(substitute["stored_path"])
                    break
                except PermanentError as exc:
                    log.error(
                        "db.row_refused",
                        sha256=row["content_hash"],
                        file=row["original_name"],
                        error=db.brief(exc.cause),
                    )
            else:
                refused.add(row["content_hash"])
        self._with_retry(partial(self.store.insert, [], hashes))  # the claims of the batch end here
        return inserted, refused, moved

    def _reroute(self, plans: list[_Planned], inserted: dict[str, int], refused: set[str]) -> list[_Planned]:
        """A new row that another writer inserted first (between our look-up and our insert): the file
        goes where that row says, as if recovered, unless something is already there."""
        lost = [p.item.sha256 for p in plans if p.row is not None and p.item.sha256 not in inserted]
        lost = [h for h in lost if h not in refused]
        if not lost:
            return plans
        known = self._with_retry(lambda: self.store.known(lost))
        out: list[_Planned] = []
        for plan in plans:
            row = known.get(plan.item.sha256) if plan.row is not None else None
            if row is not None and not os.path.lexists(row.stored_path):
                plan = _Planned(plan.item, None, None, Path(row.stored_path), row)
            elif row is not None:
                plan = _Planned(plan.item, None, None, plan.dest, row)
            out.append(plan)
        return out

    # --- after commit --------------------------------------------------------------------------------

    def _archive(
        self,
        plan: _Planned,
        inserted: dict[str, int],
        refused: set[str],
        committed: float,
        staged: archive.Staged | None,
    ) -> Outcome:
        item = plan.item
        name = archive.safe_name(item.source.path.name)
        if item.sha256 in refused and plan.row is not None:
            if staged is not None:
                archive.unstage(staged)
            return _outcome(item, Disposition.UNRECORDED, None, None, None, committed)
        if plan.row is not None and item.sha256 in inserted:
            disposition, row_id = Disposition.RECORDED, inserted.get(item.sha256)
        elif plan.known is not None and plan.dest == Path(plan.known.stored_path):
            disposition, row_id = Disposition.RECOVERED, plan.known.id
        else:  # a known hash, or a row another writer inserted between our lookup and our insert
            disposition, row_id = Disposition.DUPLICATE, plan.known.id if plan.known else None
        dest: Path | None = plan.dest
        look_again = False
        try:
            try:
                keep = disposition is Disposition.RECORDED
                fd = item.source.opened.fd if item.source.opened is not None else None
                taken = (
                    archive.place(staged, plan.dest, fd, keep)
                    if staged is not None
                    else self._take(item, plan.dest, keep)
                )
            except FileExistsError:
                if disposition is not Disposition.RECORDED or row_id is None:
                    raise
                # another daemon (a shared folder) took the planned name between the plan and the move:
                # another name, and the row follows the file
                dest = archive.plan(plan.dest.parent.parent, datetime.now(UTC), name, item.sha256, set())
                taken = self._take(item, dest, keep_bytes=True)
                try:
                    self._with_retry(
                        partial(self.store.set_stored_path, row_id, archive.safe_name(str(dest)))
                    )
                except PermanentError as exc:
                    log.error("db.stored_path_refused", row_id=row_id, error=db.brief(exc.cause))
            look_again = taken.replaced
            if taken.replaced:
                log.warning("archive.replaced_meanwhile", file=name, row_id=row_id, moved_to=str(dest))
            if taken.copied:
                log.warning("archive.gone_meanwhile", file=name, row_id=row_id, copied_to=str(dest))
        except FileNotFoundError:
            log.warning("archive.source_gone", file=name, row_id=row_id)
            dest = None
        except OSError as exc:
            log.error(
                "archive.failed",
                file=name,
                dest=str(dest),
                error=exc.strerror or str(exc),
                row_id=row_id,
            )
            dest = None
            if disposition is Disposition.RECORDED:
                self.metrics.dispositions.labels(Disposition.DEFERRED.value).inc()
            else:
                disposition = Disposition.DEFERRED
        if dest is not None and isinstance(item, Rejected) and disposition is not Disposition.RECOVERED:
            try:
                archive.write_reason(dest, item.reason, item.detail)
            except OSError as exc:  # the file is quarantined and its row says why; the note is a courtesy
                log.warning("archive.note_failed", file=name, error=exc.strerror or str(exc))
        scored = plan.scored if disposition is Disposition.RECORDED else None
        return replace(_outcome(item, disposition, row_id, dest, scored, committed), look_again=look_again)

    def _stage(self, item: Decoded | Rejected) -> archive.Staged | None:
        """None when the file cannot be taken from incoming now (read-only): its move fails later."""
        opened = item.source.opened
        try:
            return archive.stage(
                item.source.path, opened.id if opened is not None else None, self.destinations.token
            )
        except OSError as exc:
            log.debug("archive.stage_failed", file=archive.safe_name(item.source.path.name), error=str(exc))
            return None

    def _take(self, item: Decoded | Rejected, dest: Path, keep_bytes: bool) -> archive.Taken:
        opened = item.source.opened
        return archive.take(
            item.source.path,
            dest,
            opened.id if opened is not None else None,
            opened.fd if opened is not None else None,
            self.destinations.token,
            keep_bytes,
        )

    # --- database outages ----------------------------------------------------------------------------

    def _with_retry(self, operation: Callable[[], _T]) -> _T:
        """Run a database operation, waiting out outages (retry.py); an error that a retry cannot mend
        (a constraint, a value the database cannot store) raises PermanentError."""

        def attempt() -> _T:
            try:
                return operation()
            except SQLAlchemyError as exc:
                if db.transient(exc):
                    raise
                raise PermanentError(exc) from exc
            except (ValueError, TypeError) as exc:  # the driver refused a value (UnicodeEncodeError, ...)
                raise PermanentError(exc) from exc

        return retry.until_available(
            attempt, self.retry_initial_s, self.retry_max_s, self._db_failed, self.should_abort
        )

    def _db_failed(self, exc: SQLAlchemyError, retry_in_s: float) -> None:
        self.metrics.db_failures.inc()
        self.metrics.db_retries.inc()
        self.metrics.db_up.set(0)
        log.error("db.unavailable", error=db.brief(exc), retry_in_s=round(retry_in_s, 2))


class PermanentError(Exception):
    """The database refused an operation for a reason a retry cannot change."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


_DISPOSITION: dict[type, Disposition] = {
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


def _inference_failed(image: Decoded, detail: str) -> Rejected:
    return Rejected(
        image.source, image.sha256, image.size_bytes, "inference_failed", detail, image.width, image.height
    )


def _refused_row(row: dict[str, Any], quarantine: Path) -> dict[str, Any]:
    """The error row that replaces a row the database refused: nothing but what it can surely store,
    the file quarantined under an ASCII name (the row's ``stored_path`` is where the file goes)."""
    name = row["original_name"].encode("ascii", "backslashreplace").decode()
    dest = archive.plan(quarantine, datetime.now(UTC), name, row["content_hash"], set())
    return {
        **row,
        "original_name": name,
        "stored_path": str(dest).encode("ascii", "backslashreplace").decode(),
        "status": Status.ERROR.value,
        "model_version": None,
        "threshold": None,
        "score": None,
        "verdict": None,
        "box_x": None,
        "box_y": None,
        "box_w": None,
        "box_h": None,
        "error_reason": "persist_failed: the database refused this image's result",
    }


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
