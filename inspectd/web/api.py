"""The results API: ``GET /api/v1/results`` (filters, cursor paging), ``GET /api/v1/results/{id}``, and
its OpenAPI document at ``GET /api/v1/openapi.json``, derived from the filters and the table.

Paging is by id: each page is the next ``limit`` results with an id above ``after``, oldest first, and
says the ``after`` of the next page (``next_after``; null on the last). Rows inserted while a client
pages get larger ids, so no row is skipped or repeated. (With several stations writing one PostgreSQL,
a transaction may commit a smaller id after a larger one was read: a client that must see every row
pages again from its last ``after`` a few seconds later.) A bad parameter is a 400 that names it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from inspectd import __version__
from inspectd.core import results
from inspectd.core.db import Result
from inspectd.web.auth import Access

BASE = "/api/v1"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def routes(engine: Engine, access: Access) -> list[BaseRoute]:
    def fetch(filters: results.Filters, limit: int) -> list[dict[str, Any]]:
        with engine.connect() as conn:
            return results.as_dicts(conn.execute(results.query(filters).limit(limit)))

    def fetch_one(result_id: int) -> dict[str, Any] | None:
        statement = results.query(results.Filters()).where(Result.id == result_id)
        with engine.connect() as conn:
            rows = results.as_dicts(conn.execute(statement))
        return rows[0] if rows else None

    async def list_results(request: Request) -> Response:
        if (refused := access.refusal(request)) is not None:
            return refused
        try:
            filters, limit = parse_query(request.query_params.multi_items())
        except ValueError as exc:
            return bad_request(str(exc))
        rows = await run_in_threadpool(fetch, filters, limit)
        next_after = rows[-1]["id"] if len(rows) == limit else None
        return JSONResponse({"results": rows, "next_after": next_after})

    async def one_result(request: Request) -> Response:
        if (refused := access.refusal(request)) is not None:
            return refused
        raw = request.path_params["result_id"]
        if not raw.isdigit() or len(raw) > 18:
            return bad_request(f"id: not a result id: {raw[:40]!r}")
        row = await run_in_threadpool(fetch_one, int(raw))
        if row is None:
            return JSONResponse({"error": f"no result {int(raw)}"}, status_code=404)
        return JSONResponse(row)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    return [
        Route(f"{BASE}/results", list_results, methods=["GET"]),
        Route(f"{BASE}/results/{{result_id}}", one_result, methods=["GET"]),
        Route(f"{BASE}/openapi.json", openapi, methods=["GET"]),
    ]


def parse_query(items: list[tuple[str, str]]) -> tuple[results.Filters, int]:
    """The filters and the page size of a query string; ValueError naming the parameter at fault."""
    seen: dict[str, str] = {}
    for key, value in items:
        if key in seen:
            raise ValueError(f"{key}: given more than once")
        seen[key] = value
    raw_limit = seen.pop("limit", None)
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise ValueError(f"limit: a whole number from 1 to {MAX_LIMIT}, not {raw_limit[:40]!r}")
        limit = int(raw_limit)
    try:
        return results.Filters.model_validate(seen), limit
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "query"
        message = "unknown parameter" if error["type"] == "extra_forbidden" else error["msg"]
        raise ValueError(f"{field}: {message}") from None


def bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1: the parameters from ``results.Filters``, the result from the table's columns.
    (Long: a declaration, the document's shape spelled out; no logic.)"""
    schema = results.Filters.model_json_schema(ref_template="#/components/schemas/{model}")
    descriptions = {
        "since": f"only results processed since then: {results.SINCE_HELP}",
        "after": "the cursor: results with an id above this (the previous page's next_after)",
    }
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {k: v for k, v in prop.items() if k not in ("title", "default")},
            "description": descriptions.get(name, f"only results whose {name} is this"),
        }
        for name, prop in schema["properties"].items()
    ]
    parameters.append(
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
            "description": "results per page",
        }
    )
    error = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    errors = {
        "400": {"description": "a bad parameter, named", "content": _json(error)},
        "401": {"description": "the token is missing or wrong", "content": _json(error)},
        "403": {"description": "no token configured and the server listens beyond this machine"},
    }
    page = {
        "type": "object",
        "properties": {
            "results": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}},
            "next_after": {"type": ["integer", "null"], "description": "after= of the next page"},
        },
        "required": ["results", "next_after"],
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "inspectd results", "version": __version__},
        "components": {
            "schemas": {"Result": results.json_schema(), **schema.get("$defs", {})},
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"token": []}],
        "paths": {
            f"{BASE}/results": {
                "get": {
                    "summary": "results, oldest first, a page at a time",
                    "parameters": parameters,
                    "responses": {"200": {"description": "a page", "content": _json(page)}, **errors},
                }
            },
            f"{BASE}/results/{{result_id}}": {
                "get": {
                    "summary": "one result",
                    "parameters": [
                        {"name": "result_id", "in": "path", "required": True, "schema": {"type": "integer"}}
                    ],
                    "responses": {
                        "200": {
                            "description": "the result",
                            "content": _json({"$ref": "#/components/schemas/Result"}),
                        },
                        "404": {"description": "no such result"},
                        **errors,
                    },
                }
            },
        },
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}
