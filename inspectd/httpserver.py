"""HTTP endpoints: /metrics (Prometheus), /healthz (the process is alive), /readyz (it can work).

Served by uvicorn (asyncio, h11) with a Starlette app, in ONE background thread whatever the number of
connections. The listening socket is bound by ``HttpServer.start()`` in the calling thread, so a bad
address fails there, at once, as an ``HttpStartError`` with a one-line message. Each connection must send
a complete request within ``idle_timeout_s`` of connecting or of its previous response, or it is closed
(idle keep-alive sockets and slow senders alike), and at most ``max_connections`` are open at a time:
beyond that a new connection is closed as soon as it is accepted, so a flood of idle sockets costs neither
threads nor file descriptors. uvicorn installs no signal handlers here (the daemon's main thread owns
them); its access log is off and its own messages go, one line each, to the daemon's structured log.

More routes (pages, APIs) are added with ``HttpServer(..., routes=[...])``: ``build_app`` mounts them
beside ``core_routes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import socket
import threading
import time
import traceback
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import uvicorn
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from inspectd import logs

log = logs.get("inspectd.http")

Readiness = Callable[[], dict[str, bool]]

IDLE_TIMEOUT_S = 5.0  # a complete request within this of connecting or of the last response
MAX_CONNECTIONS = 100  # open at once; more are closed on accept
BACKLOG = 1024  # connections the kernel queues before accept (no descriptor of ours)
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 1  # in-flight requests get this long at stop() before they are cancelled
REFUSED_LOG_INTERVAL_S = 60.0


class HttpStartError(Exception):
    """The HTTP server could not start; ``str()`` is one line naming the address and the cause."""


def format_address(host: str, port: int) -> str:
    """``127.0.0.1:9108``, ``[::1]:9108``: the form the ``[http] listen`` key takes."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


# --- the protocol: idle deadline and connection cap ----------------------------------------------------


@dataclass
class _Limits:
    max_connections: int
    idle_timeout_s: float
    refused: int = 0  # connections closed at accept, since start
    _warned_at: float = -math.inf
    _warned_refused: int = 0

    def refuse(self) -> None:
        """Count a refused connection; a warning at most every REFUSED_LOG_INTERVAL_S while they go on."""
        self.refused += 1
        now = time.monotonic()
        if now - self._warned_at >= REFUSED_LOG_INTERVAL_S:
            log.warning(
                "http.connection_refused",
                max_connections=self.max_connections,
                refused=self.refused - self._warned_refused,
                refused_total=self.refused,
            )
            self._warned_at, self._warned_refused = now, self.refused


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline from connect and a cap on open connections.

    uvicorn arms its keep-alive timeout only after a response and cancels it at the first byte received,
    so a socket that never sends, or sends a request slowly, would stay open for ever; and its
    ``limit_concurrency`` answers 503 to requests but still accepts and holds every socket. Subclassed
    once per server (``_protocol_for``) with that server's ``_Limits``.
    """

    limits: ClassVar[_Limits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            transport.abort()  # its descriptor is freed now; the client sees the connection closed
            self.limits.refuse()
            return
        super().connection_made(transport)
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_deadline()

    def _arm_deadline(self) -> None:
        self._disarm_deadline()
        self._deadline = self.loop.call_later(self.limits.idle_timeout_s, self._deadline_passed)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete and self.conn.their_state is h11.DONE:
            return  # a whole request is being answered: the end of its response arms the next deadline
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()


def _protocol_for(limits: _Limits) -> type[_GuardedH11]:
    return type("GuardedH11", (_GuardedH11,), {"limits": limits})


# --- uvicorn -------------------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.serving = threading.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # never touch signal handlers (uvicorn already skips them off the main thread): the daemon owns them
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.serving.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        _stopping.active = True  # this thread's loop is stopping: see _ToStructlog
        await super().shutdown(sockets=sockets)


_stopping = threading.local()


class _ToStructlog(logging.Handler):
    """uvicorn's own messages as one structured line each; an exception as its type, text and place."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelno
        exc = record.exc_info[1] if record.exc_info else None
        if getattr(_stopping, "active", False):
            # stop() cutting a request after the grace ("Cancel N running task(s)") is no fault of ours
            if isinstance(exc, asyncio.CancelledError):
                return  # that request's own "Exception in ASGI application": the line above said it
            level = min(level, logging.WARNING)
        fields: dict[str, Any] = {"message": record.getMessage().strip(), "source": record.name}
        if exc is not None:
            fields.update(_describe(exc))
        event = "http.server_error" if level >= logging.ERROR else "http.server_warning"
        log.log(level, event, **fields)


def _describe(exc: BaseException) -> dict[str, str]:
    fields = {"error": f"{type(exc).__name__}: {exc}"}
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        fields["at"] = f"{frames[-1].filename}:{frames[-1].lineno}"
    return fields


def _route_uvicorn_logs() -> None:
    logger = logging.getLogger("uvicorn")
    if not any(isinstance(h, _ToStructlog) for h in logger.handlers):
        logger.addHandler(_ToStructlog())
    logger.setLevel(logging.WARNING)  # its info lines (started, shutting down) say nothing the daemon doesn't
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # (its per-connection TRACE test reads this)
    logger.propagate = False  # not also to the root logger's plain stderr handler


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"message": context.get("message", "")}
    exc = context.get("exception")
    if isinstance(exc, BaseException):
        fields.update(_describe(exc))
    log.error("http.loop_error", **fields)


# --- the listening socket ------------------------------------------------------------------------------


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    text = text[:1].lower() + text[1:]
    if exc.errno == errno.EADDRNOTAVAIL:
        text += " (not an address of this machine)"
    elif exc.errno == errno.EACCES:
        text += " (ports below 1024 need CAP_NET_BIND_SERVICE)"
    return text


def bind_socket(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket on host:port (a host name: its first address), or HttpStartError."""
    where = format_address(host, port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HttpStartError(f"cannot listen on {where}: cannot resolve {host!r}: {_reason(exc)}") from exc
    except UnicodeError as exc:
        raise HttpStartError(f"cannot listen on {where}: not a valid host name: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    try:
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise HttpStartError(f"cannot listen on {where}: {_reason(exc)}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise HttpStartError(f"cannot listen on {where}: {_reason(exc)}") from exc
    return sock


# --- the server ----------------------------------------------------------------------------------------


class HttpServer:
    """The daemon's HTTP server: ``start()`` (raises HttpStartError), ``port``, ``stop()``."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        checks: Readiness,
        *,
        routes: Sequence[BaseRoute] = (),
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.host = host
        self._port = port
        self.app = build_app([*core_routes(registry, checks), *routes])
        self._limits = _Limits(max_connections, idle_timeout_s)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound port once started (port 0 asks for a free one), the configured one before."""
        return self._port

    @property
    def address(self) -> str:
        return format_address(self.host, self._port)

    @property
    def open_connections(self) -> int:
        return len(self._server.server_state.connections) if self._server is not None else 0

    @property
    def refused_connections(self) -> int:
        return self._limits.refused

    def start(self) -> None:
        """Bind, then serve from a background thread; returns once it serves. Raises HttpStartError."""
        if self._thread is not None:
            raise RuntimeError("HttpServer.start() called twice")
        where = self.address
        sock = bind_socket(self.host, self._port)
        try:
            self._serve_from_thread(sock, where)
        except BaseException:
            sock.close()
            raise
        log.debug("http.serving", listen=self.address)

    def _serve_from_thread(self, sock: socket.socket, where: str) -> None:
        self._port = int(sock.getsockname()[1])
        _route_uvicorn_logs()
        config = uvicorn.Config(
            self.app,
            http=_protocol_for(self._limits),
            ws="none",
            lifespan="off",
            loop="none",  # the thread's own asyncio loop (asyncio.run below), never uvloop
            log_config=None,  # leave the process's logging alone
            access_log=False,
            proxy_headers=False,
            server_header=False,
            backlog=BACKLOG,
            timeout_keep_alive=max(1, math.ceil(self._limits.idle_timeout_s)),  # ours (_GuardedH11) is exact
            timeout_graceful_shutdown=STOP_GRACE_S,
        )
        server = _Server(config)
        self._server = server
        self._thread = threading.Thread(target=self._run, args=(server, sock), name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.serving.wait(0.02):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                self._thread.join(timeout=2)
                cause = _describe(self._error)["error"] if self._error else "did not start in time"
                raise HttpStartError(f"cannot listen on {where}: {cause}")

    def _run(self, server: _Server, sock: socket.socket) -> None:
        try:
            asyncio.run(self._serve(server, sock))
        except BaseException as exc:  # noqa: BLE001 # SystemExit from uvicorn too: kept for start(), logged
            self._error = exc
            log.error("http.stopped_unexpectedly", **_describe(exc))

    async def _serve(self, server: _Server, sock: socket.socket) -> None:
        asyncio.get_running_loop().set_exception_handler(_loop_exception)
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()
            for connection in list(server.server_state.connections):  # left after the grace: cut
                connection.transport.abort()
            await asyncio.sleep(0)  # let their connection_lost run before the loop closes

    def stop(self) -> None:
        """Stop accepting, close idle connections, give in-flight requests STOP_GRACE_S, join the thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=STOP_GRACE_S + 1)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=1)
        if thread.is_alive():
            log.warning("http.stop_timeout")
