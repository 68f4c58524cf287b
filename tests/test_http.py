"""The HTTP server on real sockets (127.0.0.1, port 0): routes, idle and slow connections, start-up errors."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import http.client
import json
import resource
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from inspectd.core.config import HttpConfig
from inspectd.daemon.http import HttpServer, HttpStartError

Checks = Callable[[], dict[str, bool]]


def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("demo_things", "things seen", registry=reg).inc(3)
    return reg


@contextlib.contextmanager
def serving(
    checks: Checks | None = None,
    *,
    routes: Sequence[BaseRoute] = (),
    idle_timeout_s: float = 5.0,
    max_connections: int = 100,
) -> Iterator[HttpServer]:
    server = HttpServer(
        "127.0.0.1",
        0,
        registry(),
        checks or (lambda: {"model": True, "database": True}),
        routes=routes,
        idle_timeout_s=idle_timeout_s,
        max_connections=max_connections,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def get(server: HttpServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def entries(folder: str) -> int:
    return sum(1 for _ in Path(folder).iterdir())


def threads() -> int:
    return entries("/proc/self/task")


def settled_threads() -> int:
    """The thread count once a thread that was just joined has also left the kernel's task list."""
    last, since = threads(), time.monotonic()
    deadline = since + 3
    while time.monotonic() - since < 0.2 and time.monotonic() < deadline:
        time.sleep(0.02)
        if (now := threads()) != last:
            last, since = now, time.monotonic()
    return last


def connect(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server has closed this socket (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def wait_all_closed(socks: list[socket.socket], timeout: float) -> float:
    """Seconds until every socket was closed by the server; AssertionError naming how many were not."""
    started = time.monotonic()
    left = set(socks)
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        while left:
            remaining = started + timeout - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(left)} of {len(socks)} connections still open after {timeout} s")
            for key, _ in sel.select(remaining):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                if closed_by_peer(ready):
                    sel.unregister(ready)
                    left.discard(ready)
    return time.monotonic() - started


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


# --- routes ----------------------------------------------------------------------------------------------


def test_routes() -> None:
    with serving() as server:
        status, ctype, body = get(server, "/metrics")
        assert status == 200 and ctype == CONTENT_TYPE_PLAIN_0_0_4
        assert "demo_things_total 3.0" in body.decode()
        assert get(server, "/healthz") == (200, "text/plain; charset=utf-8", b"ok\n")
        status, ctype, body = get(server, "/readyz")
        assert (status, ctype) == (200, "application/json")
        assert json.loads(body) == {"ready": True, "checks": {"model": True, "database": True}}
        status, _, body = get(server, "/nope")
        assert status == 404 and b"/metrics" in body


def test_metrics_negotiates_like_prometheus_client() -> None:
    with serving() as server:
        status, ctype, body = get(
            server, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert status == 200 and ctype.startswith("application/openmetrics-text")
        assert body.decode().endswith("# EOF\n")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        assert resp.getheader("Content-Encoding") == "gzip"
        assert b"demo_things_total" in gzip.decompress(resp.read())
        conn.close()


def test_readyz_is_503_when_a_check_fails() -> None:
    with serving(lambda: {"model": True, "database": False}) as server:
        status, _, body = get(server, "/readyz")
        assert status == 503
        assert json.loads(body) == {"ready": False, "checks": {"model": True, "database": False}}


def test_keep_alive_and_other_methods() -> None:
    with serving() as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        for _ in range(3):  # one connection, three requests
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b"ok\n"
        conn.request("POST", "/healthz", body=b"x")
        assert conn.getresponse().status == 405
        conn.close()


def test_more_routes_can_be_mounted() -> None:
    async def hello(request: Request) -> Response:
        return Response("hello\n", media_type="text/plain")

    with serving(routes=[Route("/hello", hello)]) as server:
        assert get(server, "/hello")[2] == b"hello\n"
        assert get(server, "/healthz")[0] == 200
        assert b"/hello" in get(server, "/nope")[2]


def test_a_failing_handler_is_a_500_and_one_log_line_without_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    with serving(routes=[Route("/broken", broken)]) as server, structlog.testing.capture_logs() as logs:
        assert get(server, "/broken")[0] == 500
        (sock,) = connect(server.port, 1)
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
        sock.close()
        assert get(server, "/healthz")[0] == 200
    errors = [e for e in logs if e["event"] == "http.server_error"]
    assert len(errors) == 1 and errors[0]["error"] == "RuntimeError: boom"
    assert errors[0]["message"] == "Exception in ASGI application"
    assert errors[0]["at"].endswith(f"{__file__}:{broken.__code__.co_firstlineno + 1}")
    warnings = [e for e in logs if e["event"] == "http.server_warning"]
    assert [w["message"] for w in warnings] == ["Invalid HTTP request received."]
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_start_returns_once_serving_and_signals_are_left_alone() -> None:
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with serving() as server:
        # answered at once: no retry, no sleep after start()
        assert get(server, "/healthz")[0] == 200
        assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
        assert [t.name for t in threading.enumerate()].count("http") == 1
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


# --- idle and slow connections ---------------------------------------------------------------------------


def test_300_idle_connections_add_no_threads() -> None:
    before = settled_threads()
    with serving(idle_timeout_s=60, max_connections=400) as server:
        started = threads()
        socks = connect(server.port, 300)
        try:
            wait_until(lambda: server.open_connections == 300, 10, "300 open connections")
            held = threads()
            assert get(server, "/healthz")[0] == 200  # still answering beside them
            print(f"threads: {before} before start, {started} serving, {held} with 300 idle connections")
            assert started - before == 1  # the one "http" thread
            assert held - started <= 2
        finally:
            close_all(socks)
    wait_until(lambda: threads() == before, 3, f"{before} threads again")


def test_idle_connections_are_closed_after_the_timeout() -> None:
    with serving(idle_timeout_s=1.0) as server:
        silent = connect(server.port, 50)
        (kept_alive,) = connect(server.port, 1)  # one request answered, then nothing
        kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while not reply.endswith(b"ok\n"):
            reply += kept_alive.recv(4096)
        (partial,) = connect(server.port, 1)  # a request head that never completes
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        socks = [*silent, kept_alive, partial]
        try:
            wait_until(lambda: server.open_connections == 52, 5, "52 open connections")
            took = wait_all_closed(socks, 5)
            assert 0.5 < took < 4.0
            wait_until(lambda: server.open_connections == 0, 2, "no open connection on the server")
            assert get(server, "/healthz")[0] == 200
        finally:
            close_all(socks)


def test_a_slow_sender_is_cut_at_the_deadline() -> None:
    """Trickling a request head a byte at a time does not keep a connection open past the deadline."""
    with serving(idle_timeout_s=1.0) as server:
        (sock,) = connect(server.port, 1)
        started = time.monotonic()
        head = b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100
        closed = False
        try:
            for byte in head:
                if closed_by_peer(sock):
                    closed = True
                    break
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        finally:
            sock.close()
        assert closed and time.monotonic() - started < 4.0


def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    with serving(idle_timeout_s=60, max_connections=10) as server, structlog.testing.capture_logs() as logs:
        socks = connect(server.port, 30)
        try:
            wait_until(lambda: server.refused_connections == 20, 5, "20 refused connections")
            # one warning, not one per refusal (the next at most a minute later)
            assert [e for e in logs if e["event"] == "http.connection_refused"] == [
                {
                    "event": "http.connection_refused",
                    "log_level": "warning",
                    "max_connections": 10,
                    "refused": 1,
                    "refused_total": 1,
                }
            ]
            assert server.open_connections == 10
            took = wait_all_closed(socks[10:], 3)  # accept order: the first ten are the ones held
            assert took < 2.0
            assert not any(closed_by_peer(sock) for sock in socks[:10])
            close_all(socks[:5])
            wait_until(lambda: server.open_connections == 5, 5, "5 open connections")
            assert get(server, "/healthz")[0] == 200
        finally:
            close_all(socks)


def test_1000_idle_sockets_cannot_exhaust_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2500  # this process holds the 1,000 client ends too
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        with serving(idle_timeout_s=60) as server:
            fds_before = entries("/proc/self/fd")
            socks = connect(server.port, 1000)
            try:
                wait_until(lambda: server.refused_connections == 900, 20, "900 refused connections")

                def server_fds() -> int:  # the server's share; refused sockets close as the loop gets to them
                    return entries("/proc/self/fd") - fds_before - len(socks)

                wait_until(lambda: server_fds() <= 100 + 5, 20, "the refused sockets closed")
                fds = server_fds()
                print(f"server descriptors with 1,000 idle clients: {fds}, open {server.open_connections}")
                assert server.open_connections == 100 and fds <= 100 + 5
            finally:
                close_all(socks)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_stop_is_quick_with_connections_open_and_a_request_in_flight() -> None:
    entered = threading.Event()

    async def slow(request: Request) -> Response:
        entered.set()
        await asyncio.sleep(30)
        return Response("late\n")

    server = HttpServer("127.0.0.1", 0, registry(), dict, routes=[Route("/slow", slow)], idle_timeout_s=60)
    server.start()
    port = server.port
    socks = connect(port, 20)
    (busy,) = connect(port, 1)
    busy.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        assert entered.wait(5)
        started = time.monotonic()
        with structlog.testing.capture_logs() as logs:
            server.stop()
        took = time.monotonic() - started
        # the request cut after the grace: one warning, not an error with a CancelledError
        assert [(e["log_level"], e["message"]) for e in logs] == [
            ("warning", "Cancel 1 running task(s), timeout graceful shutdown exceeded")
        ]
        assert took < 2.5, took  # STOP_GRACE_S (1 s) and a tick or two
        assert "http" not in [t.name for t in threading.enumerate()]
        wait_all_closed([*socks, busy], 2)
        with socket.socket() as again:  # the port is free again
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))
    finally:
        close_all([*socks, busy])
    server.stop()  # a second stop is harmless


# --- start-up errors -------------------------------------------------------------------------------------


def test_port_in_use_is_an_http_start_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = settled_threads()
        server = HttpServer("127.0.0.1", port, registry(), dict)
        with pytest.raises(HttpStartError) as caught:
            server.start()
        assert str(caught.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"
        assert (
            isinstance(caught.value.__cause__, OSError) and caught.value.__cause__.errno == errno.EADDRINUSE
        )
        assert threads() <= before  # no thread was started
        server.stop()  # after a failed start: nothing to do, no error


@pytest.mark.parametrize("host", ["192.0.2.1", "198.51.100.7"])  # TEST-NET addresses: on no interface here
def test_an_address_not_on_this_machine_is_an_http_start_error(host: str) -> None:
    with pytest.raises(HttpStartError) as caught:
        HttpServer(host, 9108, registry(), dict).start()
    message = str(caught.value)
    assert message.startswith(f"cannot listen on {host}:9108: cannot assign requested address")
    assert "\n" not in message


def test_an_unresolvable_host_is_an_http_start_error() -> None:
    with pytest.raises(HttpStartError) as caught:
        HttpServer("nonexistent.invalid", 9108, registry(), dict).start()
    assert str(caught.value).startswith("cannot listen on nonexistent.invalid:9108: cannot resolve")
    assert "\n" not in str(caught.value)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_ipv6_loopback() -> None:
    server = HttpServer("::1", 0, registry(), dict)
    if not ipv6_loopback():
        with pytest.raises(HttpStartError, match=r"^cannot listen on \[::1\]:0: "):
            server.start()
        return
    server.start()
    try:
        assert server.address == f"[::1]:{server.port}"
        conn = http.client.HTTPConnection("::1", server.port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b"ok\n"
        conn.close()
    finally:
        server.stop()


# --- the [http] listen key -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:9108", "127.0.0.1", 9108),
        ("0.0.0.0:80", "0.0.0.0", 80),
        ("[::1]:9108", "::1", 9108),
        ("[::]:9108", "::", 9108),
        ("[fe80::1%eth0]:9108", "fe80::1%eth0", 9108),
        ("localhost:0", "localhost", 0),
        ("metrics-1.line.example:9108", "metrics-1.line.example", 9108),
    ],
)
def test_listen_is_parsed(listen: str, host: str, port: int) -> None:
    cfg = HttpConfig(listen=listen)
    assert (cfg.host, cfg.port) == (host, port)


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("localhost", "expected HOST:PORT"),
        (":9108", "expected HOST:PORT"),
        ("::1:9108", r"an IPv6 address needs brackets: \[::1\]:9108"),
        ("[::1]9108", r"expected \[IPV6\]:PORT"),
        ("[::g]:9108", "not an IPv6 address"),
        ("[127.0.0.1]:9108", "not an IPv6 address"),
        ("300.1.1.1:9108", "not an IPv4 address"),
        ("1.2.3:9108", "not an IPv4 address"),
        ("my host:9108", "not a valid host name"),
        ("-bad.example:9108", "not a valid host name"),
        ("a..b:9108", "not a valid host name"),
        ("127.0.0.1:65536", "port from 0 to 65535"),
        ("127.0.0.1:http", "port from 0 to 65535"),
        ("[::1]:", "port from 0 to 65535"),
    ],
)
def test_bad_listen_is_rejected_with_a_reason(listen: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HttpConfig(listen=listen)
