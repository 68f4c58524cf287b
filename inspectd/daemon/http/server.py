"""The server: uvicorn in one background thread, its socket bound in the caller's thread."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import socket
import threading
import time
import traceback
from collections.abc import Generator, Sequence
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute

from inspectd.core import logs
from inspectd.daemon.http.app import Readiness, build_app, core_routes
from inspectd.daemon.http.protocol import _Limits, _protocol_for

log = logs.get("inspectd.http")

IDLE_TIMEOUT_S = 5.0  # a complete request within this of connecting or of the last response
MAX_CONNECTIONS = 100  # open at once; more are closed on accept
BACKLOG = 1024  # connections the kernel queues before accept (no descriptor of ours)
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 1  # in-flight requests get this long at stop() before they are cancelled


class HttpStartError(Exception):
    """The HTTP server could not start; ``str()`` is one line naming the address and the cause."""


def format_address(host: str, port: int) -> str:
    """``127.0.0.1:9108``, ``[::1]:9108``: the form the ``[http] listen`` key takes."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
