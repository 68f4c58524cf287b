"""The ASGI application: the core routes and the 404 that names the paths there are."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from inspectd.core import logs

log = logs.get("inspectd.http")

Readiness = Callable[[], dict[str, bool]]


# --- the application -----------------------------------------------------------------------------------


class _AsgiEndpoint:
    """An ASGI callable as a Route endpoint (Starlette treats a plain function as a request handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def core_routes(registry: CollectorRegistry, checks: Readiness) -> list[BaseRoute]:
    """/metrics, /healthz and /readyz. Handlers are coroutines: they run on the event loop, no thread pool."""

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        state = checks()
        ready = all(state.values())
        body = json.dumps({"ready": ready, "checks": state}) + "\n"
        return Response(body, status_code=200 if ready else 503, media_type="application/json")

    return [
        # prometheus_client's own ASGI app: the same content negotiation (text, OpenMetrics) and gzip as its
        # WSGI app served before, and the same Content-Type
        Route("/metrics", _AsgiEndpoint(make_asgi_app(registry)), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]


def build_app(routes: Sequence[BaseRoute]) -> Starlette:
    """The ASGI app serving ``routes``; any other path is a 404 that names the paths there are."""
    paths = ", ".join(route.path for route in routes if isinstance(route, Route))

    async def not_found(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(f"not found: try {paths}\n", status_code=404)

    return Starlette(routes=list(routes), exception_handlers={404: not_found})
