"""The new rows of a batch, typed: one field per column of ``results`` that the commit writes.

``NewRow``'s fields are the table's columns (db.Result) less the id and the operator's label columns;
tests/test_plan.py fails when a column is added to the table and not here.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inspectd.core.records import Rejected, Scored, Status
from inspectd.daemon.commit import archive

NOT_WRITTEN_BY_COMMIT = frozenset({"id", "label", "labeled_by", "labeled_at", "label_box"})
REFUSED_REASON = "persist_failed: the database refused this image's result"


@dataclass(frozen=True, slots=True)
class NewRow:
    content_hash: str
    original_name: str
    stored_path: str
    size_bytes: int
    width: int | None
    height: int | None
    received_at: datetime
    processed_at: datetime
    latency_s: float
    station: str
    status: str
    model_version: str | None = None
    threshold: float | None = None
    score: float | None = None
    verdict: str | None = None
    error_reason: str | None = None
    box_x: int | None = None
    box_y: int | None = None
    box_w: int | None = None
    box_h: int | None = None
    brightness: float | None = None
    contrast: float | None = None

    def values(self) -> dict[str, Any]:
        """The insert's parameters."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def new_row(item: Scored | Rejected, dest: Path, station: str, now: datetime) -> NewRow:
    """The row of a scored image (its verdict) or of a rejected file (the reason)."""
    if isinstance(item, Rejected):
        source, sha256, size, width, height = (
            item.source,
            item.sha256,
            item.size_bytes,
            item.width,
            item.height,
        )
    else:
        image = item.image
        source, sha256, size, width, height = (
            image.source,
            image.sha256,
            image.size_bytes,
            image.width,
            image.height,
        )
    row = NewRow(
        content_hash=sha256,
        original_name=archive.safe_name(source.path.name),
        stored_path=archive.safe_name(str(dest)),
        size_bytes=size,
        width=width,
        height=height,
        received_at=source.received_at,
        processed_at=now,
        latency_s=max(0.0, time.monotonic() - source.ready_at),
        station=station,
        status=Status.ERROR.value if isinstance(item, Rejected) else Status.OK.value,
    )
    if isinstance(item, Rejected):
        return dataclasses.replace(row, error_reason=f"{item.reason}: {item.detail}")
    box = item.box or (None, None, None, None)
    return dataclasses.replace(
        row,
        brightness=image.brightness,
        contrast=image.contrast,
        model_version=item.model_version,
        threshold=item.threshold,
        score=item.score,
        verdict=item.verdict.value,
        box_x=box[0],
        box_y=box[1],
        box_w=box[2],
        box_h=box[3],
    )


def refused_row(row: NewRow, quarantine: Path) -> NewRow:
    """The error row that replaces a row the database refused: nothing but what it can surely store, the
    file quarantined under an ASCII name (the row's ``stored_path`` is where the file goes)."""
    name = row.original_name.encode("ascii", "backslashreplace").decode()
    dest = archive.plan(quarantine, datetime.now(UTC), name, row.content_hash, set())
    return dataclasses.replace(
        row,
        original_name=name,
        stored_path=str(dest).encode("ascii", "backslashreplace").decode(),
        status=Status.ERROR.value,
        model_version=None,
        threshold=None,
        score=None,
        verdict=None,
        box_x=None,
        box_y=None,
        box_w=None,
        box_h=None,
        error_reason=REFUSED_REASON,
    )
