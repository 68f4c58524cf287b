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

from inspectd.daemon.http.app import build_app, core_routes
from inspectd.daemon.http.server import HttpServer, HttpStartError, format_address

__all__ = ["HttpServer", "HttpStartError", "build_app", "core_routes", "format_address"]
