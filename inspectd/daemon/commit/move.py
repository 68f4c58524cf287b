"""The move after the commit: each planned file goes where its row says (archive.py does the moving).

Before the commit each file is *staged* (taken from its name in incoming to a private name beside it),
so no writer reaching the name can change the bytes the row is about; after the commit it is *placed*
at its destination. A file whose batch was not recorded is put back under its name (``unstage``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from inspectd.core import logs
from inspectd.core.records import Decoded, Disposition, Rejected
from inspectd.daemon.commit import archive
from inspectd.daemon.commit.persist import Persist
from inspectd.daemon.commit.plan import Planned, Roots
from inspectd.daemon.metrics import Metrics

log = logs.get("inspectd.pipeline")


@dataclass(frozen=True, slots=True)
class Destinations:
    processed: Path
    quarantine: Path
    incoming: Path | None = None  # its own .quarantine takes what cannot cross filesystems
    token: str = "0" * 8  # this daemon's private names in incoming (archive.token_for)

    def roots(self) -> Roots:
        return Roots(self.processed, self.quarantine, self.local_quarantine())

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
class Moved:
    disposition: Disposition
    dest: Path | None
    look_again: bool = False  # the name in incoming holds another file now


class Mover:
    def __init__(self, destinations: Destinations, persist: Persist, metrics: Metrics) -> None:
        self.destinations = destinations
        self.persist = persist
        self.metrics = metrics

    def stage(self, item: Decoded | Rejected) -> archive.Staged | None:
        """None when the file cannot be taken from incoming now (read-only): its move fails later."""
        opened = item.source.opened
        try:
            return archive.stage(
                item.source.path, opened.id if opened is not None else None, self.destinations.token
            )
        except OSError as exc:
            log.debug("archive.stage_failed", file=archive.safe_name(item.source.path.name), error=str(exc))
            return None

    def move(
        self,
        item: Decoded | Rejected,
        p: Planned,
        disposition: Disposition,
        row_id: int | None,
        staged: archive.Staged | None,
    ) -> Moved:
        """Place the file at its planned destination (a recorded file whose name was taken meanwhile by
        another daemon gets another name, and its row follows); a move that fails is ``deferred``."""
        name = archive.safe_name(item.source.path.name)
        if disposition is Disposition.UNRECORDED:
            if staged is not None:
                archive.unstage(staged)
            return Moved(disposition, None)
        dest: Path | None = p.dest
        look_again = False
        try:
            taken, dest = self._place(item, p.dest, disposition, row_id, staged)
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
                "archive.failed", file=name, dest=str(dest), error=exc.strerror or str(exc), row_id=row_id
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
        return Moved(disposition, dest, look_again)

    def _place(
        self,
        item: Decoded | Rejected,
        dest: Path,
        disposition: Disposition,
        row_id: int | None,
        staged: archive.Staged | None,
    ) -> tuple[archive.Taken, Path]:
        keep = disposition is Disposition.RECORDED
        fd = item.source.opened.fd if item.source.opened is not None else None
        try:
            if staged is not None:
                return archive.place(staged, dest, fd, keep), dest
            return self._take(item, dest, keep), dest
        except FileExistsError:
            if disposition is not Disposition.RECORDED or row_id is None:
                raise
        # another daemon (a shared folder) took the planned name between the plan and the move
        name = archive.safe_name(item.source.path.name)
        dest = archive.plan(dest.parent.parent, datetime.now(UTC), name, item.sha256, set())
        taken = self._take(item, dest, keep_bytes=True)
        self.persist.set_stored_path(row_id, archive.safe_name(str(dest)))
        return taken, dest

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
