"""``inspectd results``: the recorded results as a table, CSV or JSON lines (every column of the table)."""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime
from typing import Any

import click

from inspectd.core import results as results_core
from inspectd.core.records import Status, Verdict
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


def parse_since(value: str) -> datetime:
    try:
        return results_core.parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.option("--since", help="only results processed since then: ISO time or age (30m, 2h, 7d)")
@click.option("--verdict", type=click.Choice([v.value for v in Verdict]))
@click.option("--status", type=click.Choice([s.value for s in Status]))
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
    filters = results_core.Filters(
        since=parse_since(since) if since else None,
        verdict=Verdict(verdict) if verdict else None,
        status=Status(status) if status else None,
        station=station,
    )
    statement = results_core.query(filters).order_by(None).order_by(Result.id.desc())
    if limit:
        statement = statement.limit(limit)
    with engine.connect() as conn:
        rows = results_core.as_dicts(conn.execute(statement))
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
