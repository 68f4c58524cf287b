"""Results as the outside sees them: one filter, one query and one JSON form for ``inspectd results``,
the results API and the MQTT messages (every column of ``results``, derived from the table, never a hand
copy).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Select, select

from inspectd.core.db import Result, result_columns
from inspectd.core.records import Status, Verdict

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
SINCE_HELP = "an ISO date/time (2026-11-23T08:00) or an age (30m, 2h, 7d)"


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``7d`` ago, or an ISO time (UTC when it names no zone); ValueError otherwise."""
    match = _RELATIVE.match(value.strip())
    if match:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"use {SINCE_HELP}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Filters(BaseModel):
    """Which results: every field optional, unknown ones refused (an API query names the bad one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    since: datetime | None = None
    station: str | None = Field(default=None, min_length=1, max_length=64)
    verdict: Verdict | None = None
    status: Status | None = None
    model_version: str | None = Field(default=None, min_length=1, max_length=64)
    after: int | None = Field(default=None, ge=0)  # the cursor: results with a larger id

    @field_validator("since", mode="before")
    @classmethod
    def _since(cls, value: Any) -> Any:
        return parse_since(value) if isinstance(value, str) else value


def query(filters: Filters, columns: Sequence[str] | None = None) -> Select[Any]:
    """The results that match, oldest first (by id: a cursor that new rows cannot disturb)."""
    fields = columns or result_columns()
    statement = select(*(getattr(Result, f) for f in fields)).order_by(Result.id)
    if filters.since is not None:
        statement = statement.where(Result.processed_at >= filters.since)
    if filters.station is not None:
        statement = statement.where(Result.station == filters.station)
    if filters.verdict is not None:
        statement = statement.where(Result.verdict == filters.verdict.value)
    if filters.status is not None:
        statement = statement.where(Result.status == filters.status.value)
    if filters.model_version is not None:
        statement = statement.where(Result.model_version == filters.model_version)
    if filters.after is not None:
        statement = statement.where(Result.id > filters.after)
    return statement


def plain(value: Any) -> Any:
    """A column's value as JSON has it: times in ISO 8601 with their zone (UTC)."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return value


def as_dicts(rows: Iterable[Sequence[Any]], columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    fields = columns or result_columns()
    return [dict(zip(fields, (plain(v) for v in row), strict=True)) for row in rows]


def json_schema() -> dict[str, Any]:
    """A result as JSON Schema, from the table's columns: name, type, nullability."""
    kinds = {int: "integer", float: "number", str: "string", datetime: "string"}
    properties: dict[str, Any] = {}
    for column in Result.__table__.columns:
        kind = kinds.get(column.type.python_type, "string")
        prop: dict[str, Any] = {"type": [kind, "null"] if column.nullable else kind}
        if column.type.python_type is datetime:
            prop["format"] = "date-time"
        properties[column.name] = prop
    return {
        "type": "object",
        "properties": properties,
        "required": list(result_columns()),
        "additionalProperties": False,
    }
