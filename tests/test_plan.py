"""The commit's decisions as tables: pure functions, no files, no database (plan.py, rows.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from inspectd.core.db import Result
from inspectd.core.records import Disposition, Status
from inspectd.daemon.commit import plan
from inspectd.daemon.commit.plan import Candidate, Intent, KnownRow, Planned, Roots, World
from inspectd.daemon.commit.rows import NOT_WRITTEN_BY_COMMIT, NewRow

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = "2026-12-01"
ROOTS = Roots(Path("/p"), Path("/q"), None)
A, B, C = "a" * 64, "b" * 64, "c" * 64


def world(
    known: dict[str, KnownRow] | None = None,
    occupied: set[str] = frozenset(),  # type: ignore[assignment]
    same: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
) -> World:
    """``occupied``: paths something is at; ``same``: (here, stored) pairs that are one inode."""
    return World(
        known=known or {},
        at_stored=lambda here, stored: str(stored) not in occupied or (str(here), str(stored)) in same,
        occupied=lambda path: str(path) in occupied,
        now=NOW,
        token=lambda: "t0k3n0",
    )


def cand(sha: str, name: str, status: Status = Status.OK, movable: bool = True) -> Candidate:
    return Candidate(sha, name, Path("/in") / name, status, movable)


def summary(planned: list[Planned]) -> list[tuple[str, str]]:
    return [(p.intent.value, str(p.dest)) for p in planned]


CASES = {
    "a new file is recorded into processed under its own name": (
        [cand(A, "x.png")],
        world(),
        [("record", f"/p/{DAY}/x.png")],
    ),
    "an error goes to quarantine": (
        [cand(A, "x.png", Status.ERROR)],
        world(),
        [("record", f"/q/{DAY}/x.png")],
    ),
    "recovered after a crash between commit and move (the archive name is still free)": (
        [cand(A, "x.png")],
        world({A: KnownRow(7, f"/p/{DAY}/x.png", "ok")}),
        [("recover", f"/p/{DAY}/x.png")],
    ),
    "recovered after a crash halfway through the move (linked, not yet unlinked)": (
        [cand(A, "x.png")],
        world(
            {A: KnownRow(7, f"/p/{DAY}/x.png", "ok")},
            occupied={f"/p/{DAY}/x.png"},
            same={("/in/x.png", f"/p/{DAY}/x.png")},
        ),
        [("recover", f"/p/{DAY}/x.png")],
    ),
    "known bytes whose archived file is there: a copy, under a name of its own": (
        [cand(A, "x.png")],
        world({A: KnownRow(7, f"/p/{DAY}/x.png", "ok")}, occupied={f"/p/{DAY}/x.png"}),
        [("copy", f"/p/{DAY}/x.{A[:12]}.png")],
    ),
    "a known error row's bytes again: the copy goes where errors go": (
        [cand(A, "y.png")],
        world({A: KnownRow(7, "/q/old/y.png", "error")}, occupied={"/q/old/y.png"}),
        [("copy", f"/q/{DAY}/y.png")],
    ),
    "duplicate bytes under two names in one batch: one row, one copy": (
        [cand(A, "x.png"), cand(A, "y.png")],
        world(),
        [("record", f"/p/{DAY}/x.png"), ("copy", f"/p/{DAY}/y.png")],
    ),
    "a name collision in the archive: the hash goes into the name": (
        [cand(A, "x.png")],
        world(occupied={f"/p/{DAY}/x.png"}),
        [("record", f"/p/{DAY}/x.{A[:12]}.png")],
    ),
    "two files of one name in one batch: distinct destinations": (
        [cand(A, "x.png"), cand(B, "x.png")],
        world(),
        [("record", f"/p/{DAY}/x.png"), ("record", f"/p/{DAY}/x.{B[:12]}.png")],
    ),
    "the same frame again and again: hash, then a random tag": (
        [cand(A, "x.png")],
        world(occupied={f"/p/{DAY}/x.png", f"/p/{DAY}/x.{A[:12]}.png"}),
        [("record", f"/p/{DAY}/x.{A[:12]}.t0k3n0.png")],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_plan(case: str) -> None:
    candidates, w, expected = CASES[case]
    assert summary(plan.plan(candidates, ROOTS, w)) == expected


def test_a_folder_is_quarantined_on_incomings_filesystem() -> None:
    roots = Roots(Path("/p"), Path("/q"), Path("/in/.quarantine"))
    planned = plan.plan(
        [cand(A, "d", Status.ERROR, movable=False), cand(B, "f", Status.ERROR)], roots, world()
    )
    assert summary(planned) == [("record", f"/in/.quarantine/{DAY}/d"), ("record", f"/q/{DAY}/f")]


DISPOSITIONS = {
    # intent, inserted, refused -> disposition, row id
    "recorded": (Intent.RECORD, {A: 3}, set(), (Disposition.RECORDED, 3)),
    "refused even as an error row: unrecorded": (Intent.RECORD, {}, {A}, (Disposition.UNRECORDED, None)),
    "recovered": (Intent.RECOVER, {}, set(), (Disposition.RECOVERED, 7)),
    "copy": (Intent.COPY, {}, set(), (Disposition.DUPLICATE, 7)),
}


@pytest.mark.parametrize("case", list(DISPOSITIONS))
def test_disposition(case: str) -> None:
    intent, inserted, refused, expected = DISPOSITIONS[case]
    p = Planned(cand(A, "x.png"), intent, Path("/p/x.png"), KnownRow(7, "/p/x.png", "ok"))
    assert plan.disposition(p, inserted, refused) == expected


def test_a_row_another_writer_inserted_first() -> None:
    """Between our look-up and our insert another station committed the same bytes: where its row
    points is free -> the file goes there (recovered); taken -> ours is a copy."""
    planned = plan.plan([cand(A, "x.png"), cand(B, "y.png")], ROOTS, world())
    lost = {A: KnownRow(1, "/p/other/x.png", "ok"), B: KnownRow(2, "/p/other/y.png", "ok")}
    rerouted = plan.reroute(planned, lost, world(occupied={"/p/other/y.png"}))
    assert summary(rerouted) == [("recover", "/p/other/x.png"), ("copy", f"/p/{DAY}/y.png")]
    assert [plan.disposition(p, {}, set())[0] for p in rerouted] == [
        Disposition.RECOVERED,
        Disposition.DUPLICATE,
    ]


def test_a_refused_row_moves_its_file_to_quarantine() -> None:
    planned = plan.plan([cand(A, "x.png"), cand(B, "y.png")], ROOTS, world())
    moved = plan.moved(planned, {B: Path("/q/2026-12-01/y.png")})
    assert [str(p.dest) for p in moved] == [f"/p/{DAY}/x.png", "/q/2026-12-01/y.png"]


def test_new_rows_carry_every_column_the_commit_writes() -> None:
    """Fails when a column is added to ``results`` and the commit does not write it (or says why not)."""
    columns = {c.name for c in Result.__table__.columns}
    fields = set(NewRow.__dataclass_fields__)
    assert fields == columns - NOT_WRITTEN_BY_COMMIT
    assert columns >= NOT_WRITTEN_BY_COMMIT
