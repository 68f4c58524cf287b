"""What happens to every file of a batch: pure decisions, made before and after the commit.

The vocabulary (README, glossary): a *candidate* is a file of the batch as the plan sees it; its
*intent* is what the commit should do for it (a new row, finish an earlier run's move, archive it as a
copy of known bytes, or leave it in incoming); its *disposition* is the final account once the rows are
committed. Everything these functions need from the world (the rows already in the database, what is at
a path) comes in as arguments, so every rule is a table test (tests/test_plan.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from inspectd.core.records import Disposition, Status
from inspectd.daemon.commit import archive


@dataclass(frozen=True, slots=True)
class KnownRow:
    """A row already in the database for a content hash."""

    id: int
    stored_path: str
    status: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """A decoded or rejected file of the batch: its bytes' hash, its name in incoming, whether it decoded,
    and whether it is a regular file (a folder or special file is never copied across filesystems)."""

    sha256: str
    name: str  # its name in incoming (the archive's name is derived from it)
    here: Path  # where it is now: its private staged name, or its name in incoming
    status: Status
    movable: bool = True


class Intent(StrEnum):
    RECORD = "record"  # a new row, then the file goes to dest
    RECOVER = "recover"  # the row exists and names dest: an earlier run stopped before (or during) the move
    COPY = "copy"  # the bytes have a row (or an earlier file of this batch has them): archived as a copy


@dataclass(frozen=True, slots=True)
class Planned:
    candidate: Candidate
    intent: Intent
    dest: Path
    known: KnownRow | None = None


@dataclass(frozen=True, slots=True)
class Roots:
    processed: Path
    quarantine: Path
    local_quarantine: Path | None = None  # <incoming>/.quarantine when quarantine is on another filesystem


@dataclass(frozen=True, slots=True)
class World:
    """What the plan may know of the world: the known rows, and what is at a path now."""

    known: Mapping[str, KnownRow]
    at_stored: Callable[[Path, Path], bool]  # (here, stored_path): stored is free, or is this very file
    occupied: Callable[[Path], bool]  # something is at this path (archive names are never overwritten)
    now: datetime
    token: Callable[[], str] = lambda: secrets.token_hex(3)


def plan(candidates: Sequence[Candidate], roots: Roots, world: World) -> list[Planned]:
    """One intent and one destination per candidate, in order; destinations are distinct in the batch."""
    taken: set[Path] = set()
    planned: list[Planned] = []
    first: set[str] = set()
    for c in candidates:
        row = world.known.get(c.sha256)
        if row is not None and world.at_stored(c.here, Path(row.stored_path)):
            planned.append(Planned(c, Intent.RECOVER, Path(row.stored_path), row))
            continue
        status = Status(row.status) if row is not None else c.status
        dest = _name(c, root_for(c, status, roots), world, taken)
        if row is not None or c.sha256 in first:
            planned.append(Planned(c, Intent.COPY, dest, row))
        else:
            first.add(c.sha256)
            planned.append(Planned(c, Intent.RECORD, dest))
    return planned


def root_for(c: Candidate, status: Status, roots: Roots) -> Path:
    if status is not Status.ERROR:
        return roots.processed
    if not c.movable and roots.local_quarantine is not None:
        return roots.local_quarantine
    return roots.quarantine


def reroute(planned: Sequence[Planned], lost: Mapping[str, KnownRow], world: World) -> list[Planned]:
    """A new row that another writer inserted first (between the look-up and the insert): the file goes
    where that row says, as if recovered, unless something is already there (then: a copy)."""
    out: list[Planned] = []
    for p in planned:
        row = lost.get(p.candidate.sha256) if p.intent is Intent.RECORD else None
        if row is not None and not world.occupied(Path(row.stored_path)):
            p = Planned(p.candidate, Intent.RECOVER, Path(row.stored_path), row)
        elif row is not None:
            p = Planned(p.candidate, Intent.COPY, p.dest, row)
        out.append(p)
    return out


def moved(planned: Sequence[Planned], substitutes: Mapping[str, Path]) -> list[Planned]:
    """The rows the database refused were replaced by error rows: those files go to quarantine."""
    return [
        replace(p, dest=substitutes[p.candidate.sha256]) if p.candidate.sha256 in substitutes else p
        for p in planned
    ]


def disposition(p: Planned, inserted: Mapping[str, int], refused: set[str]) -> tuple[Disposition, int | None]:
    """The final account of a planned file after the commit, and the id of the row that is about it."""
    if p.intent is Intent.RECORD:
        if p.candidate.sha256 in refused:
            return Disposition.UNRECORDED, None
        if p.candidate.sha256 in inserted:
            return Disposition.RECORDED, inserted[p.candidate.sha256]
        return Disposition.DUPLICATE, None  # lost a race and not rerouted: only when the row vanished again
    if p.intent is Intent.RECOVER:
        return Disposition.RECOVERED, p.known.id if p.known else None
    return Disposition.DUPLICATE, p.known.id if p.known else None


def _name(c: Candidate, root: Path, world: World, taken: set[Path]) -> Path:
    return archive.plan(root, world.now, c.name, c.sha256, taken, world.occupied, world.token)
