"""Human labels: on result rows (by id, hash or file name), from a CSV, or from label folders.

A labeled image is either a result row with ``label`` set, or an ``examples`` row for an image the
daemon never saw (dropped into ``<labels>/present/`` or ``<labels>/absent/``, or imported by path).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.orm import Session

from inspectd.core import results
from inspectd.core.db import Example, Result
from inspectd.core.records import Verdict
from inspectd.core.registry import file_sha256

LABELS = tuple(v.value for v in Verdict)  # "present", "absent"


class LabelError(Exception):
    """A label cannot be applied: unknown or ambiguous reference, bad value."""


@dataclass(frozen=True, slots=True)
class Labeled:
    """One labeled image for training: where its bytes are, and its answer."""

    path: Path
    label: int  # 1 present, 0 absent
    sha256: str
    source: str  # "result", "folder" or "import"
    box: tuple[int, int, int, int] | None = None  # where the symbol is (x, y, w, h), when a human said


def parse_box(text: str | None) -> tuple[int, int, int, int] | None:
    """ "x,y,w,h" (or four CSV cells joined) -> a box; empty -> None; raises LabelError."""
    if text is None or not text.strip(" ,"):
        return None
    try:
        x, y, w, h = (round(float(v)) for v in text.split(","))
    except ValueError:
        raise LabelError(f"a box is x,y,w,h in pixels, not {text!r}") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise LabelError(f"a box needs x, y >= 0 and w, h > 0, not {text!r}")
    return (x, y, w, h)


def format_box(box: tuple[int, int, int, int] | None) -> str | None:
    return None if box is None else ",".join(map(str, box))


@dataclass
class SyncReport:
    linked: int = 0  # folder images whose bytes match a result row: the row got the label
    added: int = 0  # new examples
    relabeled: int = 0  # moved from one label folder to the other
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)


def _check(label: str) -> str:
    if label not in LABELS:
        raise LabelError(f"label must be present or absent, not {label!r}")
    return label


def find_result(session: Session, ref: str) -> Result:
    """A result by id, by content hash (or a unique prefix of 8+ characters), or by unique file name."""
    ref = ref.strip()
    if ref.isdigit():
        row = session.get(Result, int(ref))
        if row is not None:
            return row
    conditions = [Result.original_name == ref]
    if len(ref) >= 8 and all(c in "0123456789abcdef" for c in ref.lower()):
        conditions.append(Result.content_hash.startswith(ref.lower()))
    rows = session.scalars(select(Result).where(or_(*conditions)).limit(5)).all()
    if not rows:
        raise LabelError(f"no result matches {ref!r} (an id, a content hash, or a file name)")
    if len(rows) > 1:
        ids = ", ".join(str(r.id) for r in rows)
        raise LabelError(f"{ref!r} matches several results (ids {ids}); label by id or hash")
    return rows[0]


def label_result(
    engine: Engine, ref: str, label: str, by: str | None, box: tuple[int, int, int, int] | None = None
) -> Result:
    with Session(engine) as session, session.begin():
        row = find_result(session, ref)
        row.label, row.labeled_by, row.labeled_at = _check(label), by, datetime.now(UTC)
        row.label_box = format_box(box if label == Verdict.PRESENT else None)
        session.flush()
        session.expunge(row)
        return row


def upsert_example(
    session: Session,
    image: Path,
    label: str,
    source: str,
    by: str | None,
    now: datetime,
    box: tuple[int, int, int, int] | None = None,
) -> str:
    """Returns 'added', 'relabeled' or 'unchanged'."""
    sha = file_sha256(image)
    existing = session.scalars(select(Example).where(Example.content_hash == sha)).one_or_none()
    if existing is None:
        session.add(
            Example(
                content_hash=sha,
                path=str(image),
                label=label,
                source=source,
                labeled_by=by,
                labeled_at=now,
                box=format_box(box),
            )
        )
        return "added"
    if box is not None:
        existing.box = format_box(box)
    if existing.label == label and existing.path == str(image):
        return "unchanged"
    existing.label, existing.path, existing.labeled_by, existing.labeled_at = label, str(image), by, now
    return "relabeled"


def sync_folders(engine: Engine, root: Path, extensions: tuple[str, ...], by: str | None) -> SyncReport:
    """Images in ``root/present`` and ``root/absent`` become labels (linked to their result row if any)."""
    report = SyncReport()
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        for label in LABELS:
            folder = root / label
            if not folder.is_dir():
                continue
            for image in sorted(folder.iterdir()):
                if image.name.startswith(".") or not image.name.lower().endswith(extensions):
                    continue
                if image.is_symlink() or not image.is_file():
                    report.skipped.append(f"{image}: not a regular file")
                    continue
                sha = file_sha256(image)
                result = session.scalars(select(Result).where(Result.content_hash == sha)).one_or_none()
                if result is not None:
                    if result.label == label:
                        report.unchanged += 1
                    else:
                        result.label, result.labeled_by, result.labeled_at = label, by, now
                        report.linked += 1
                    continue
                outcome = upsert_example(session, image, label, "folder", by, now)
                if outcome == "added":
                    report.added += 1
                elif outcome == "relabeled":
                    report.relabeled += 1
                else:
                    report.unchanged += 1
    return report


def review(
    engine: Engine,
    limit: int,
    confident: int,
    seed: int = 0,
    filters: results.Filters | None = None,
) -> list[dict[str, Any]]:
    """Unlabeled results most worth a look: scores nearest their threshold, then a random sample of
    confident ones (to catch confident mistakes); ``filters`` narrows them (station, time, version,
    verdict)."""
    base = select(Result).where(Result.status == "ok", Result.label.is_(None))
    if filters is not None:
        base = base.where(Result.id.in_(results.query(filters, ["id"])))
    margin = func.abs(Result.score - Result.threshold)
    with Session(engine) as session:
        near = session.scalars(base.order_by(margin, Result.id).limit(limit)).all()
        taken = {r.id for r in near}
        pool = session.scalars(base.order_by(margin.desc(), Result.id).limit(max(confident * 20, 200))).all()
        rest = [r for r in pool if r.id not in taken]
        sample = random.Random(seed).sample(rest, min(confident, len(rest)))
        out = []
        for reason, rows in (("uncertain", near), ("confident-sample", sample)):
            for r in rows:
                box = None if r.box_x is None else [r.box_x, r.box_y, r.box_w, r.box_h]
                out.append(
                    {
                        "id": r.id,
                        "why": reason,
                        "original_name": r.original_name,
                        "score": r.score,
                        "threshold": r.threshold,
                        "verdict": r.verdict,
                        "stored_path": r.stored_path,
                        "model_version": r.model_version,
                        "station": r.station,
                        "width": r.width,
                        "height": r.height,
                        "box": box,
                    }
                )
        return out


def clear_label(engine: Engine, result_id: int) -> Result:
    """Undo: the result is unlabeled again."""
    with Session(engine) as session, session.begin():
        row = find_result(session, str(result_id))
        row.label = row.labeled_by = row.labeled_at = row.label_box = None
        session.flush()
        session.expunge(row)
        return row


def labeled_examples(engine: Engine) -> list[Labeled]:
    """Every labeled image whose file still exists, results first, each content once."""
    out: dict[str, Labeled] = {}
    with Session(engine) as session:
        for sha, path, label, box in session.execute(
            select(Result.content_hash, Result.stored_path, Result.label, Result.label_box).where(
                Result.label.is_not(None)
            )
        ):
            out.setdefault(
                sha, Labeled(Path(path), int(label == Verdict.PRESENT), sha, "result", parse_box(box))
            )
        for sha, path, label, source, box in session.execute(
            select(Example.content_hash, Example.path, Example.label, Example.source, Example.box)
        ):
            out.setdefault(
                sha, Labeled(Path(path), int(label == Verdict.PRESENT), sha, source, parse_box(box))
            )
    return [item for item in out.values() if item.path.is_file()]
