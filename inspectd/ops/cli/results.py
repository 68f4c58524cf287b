"""``inspectd results``: the recorded results as a table, CSV or JSON lines (every column of the table)."""

from __future__ import annotations

import csv
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from sqlalchemy import select

from inspectd.core.records import Verdict
from inspectd.ops.cli.base import (
    Obj,
    cli,
)

TABLE_FIELDS = (
    "id",
    "processed_at",
    "original_name",
    "status",
    "verdict",
    "score",
    "model_version",
    "box",
    "error_reason",
)


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str) -> datetime:
    match = _RELATIVE.match(value.strip())
    if match:
        return datetime.now(UTC) - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use an ISO date/time (2026-11-23T08:00) or an age (30m, 2h, 7d)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return value


@cli.command()
@click.option("--since", help="only results processed since then: ISO time or age (30m, 2h, 7d)")
@click.option("--verdict", type=click.Choice([v.value for v in Verdict]))
@click.option("--status", type=click.Choice(["ok", "error"]))
@click.option("--station", help="only results from this station")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="at most this many (newest first)")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]), default="table")
@click.pass_obj
def results(
    obj: Obj,
    since: str | None,
    verdict: str | None,
    status: str | None,
    station: str | None,
    limit: int | None,
    fmt: str,
) -> None:
    """List recorded results (one JSON object per line with --format jsonl)."""
    from inspectd.core import db
    from inspectd.core.db import Result

    fields = db.result_columns()
    cfg = obj.config()
    engine = db.make_engine(cfg.database.url, cfg.database.busy_timeout_s)
    query = select(*(getattr(Result, f) for f in fields)).order_by(Result.id.desc())
    if since:
        query = query.where(Result.processed_at >= parse_since(since))
    if verdict:
        query = query.where(Result.verdict == verdict)
    if status:
        query = query.where(Result.status == status)
    if station:
        query = query.where(Result.station == station)
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        rows = [dict(zip(fields, (_plain(v) for v in row), strict=True)) for row in conn.execute(query)]
    rows.reverse()
    out = sys.stdout
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row) + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    else:
        _table(rows, out)


def _table(rows: list[dict[str, Any]], out: Any) -> None:
    def cell(field: str, value: Any) -> str:
        if value is None:
            return "-"
        if field == "score":
            return f"{value:.3f}"
        if field == "processed_at":
            return str(value)[:19].replace("T", " ")
        return str(value).replace("\n", "\\n")

    for row in rows:
        corner = row["box_x"], row["box_y"], row["box_w"], row["box_h"]
        row["box"] = None if corner[0] is None else "{},{} {}x{}".format(*corner)
    table = [list(TABLE_FIELDS)] + [[cell(f, row[f]) for f in TABLE_FIELDS] for row in rows]
    widths = [min(max(len(r[i]) for r in table), 48) for i in range(len(TABLE_FIELDS))]
    for r in table:
        out.write("  ".join(c[:w].ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
    out.write(f"({len(rows)} results)\n")
