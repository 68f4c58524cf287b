"""sd_notify through a real $NOTIFY_SOCKET datagram socket, as systemd would receive it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, Workspace, png_bytes, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, Callable[[], list[str]]]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    received: list[str] = []

    def messages() -> list[str]:
        while True:
            try:
                received.append(sock.recv(4096).decode())
            except BlockingIOError:
                return received

    yield str(path), messages
    sock.close()


def test_ready_watchdog_status_stopping(
    daemon: Callable[..., DaemonProcess],
    upgraded: Workspace,
    notify_socket: tuple[str, Callable[[], list[str]]],
) -> None:
    address, messages = notify_socket
    proc = daemon(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
    wait_until(lambda: any("READY=1" in m for m in messages()), 10, "READY=1")
    ready = next(m for m in messages() if "READY=1" in m)
    assert "STATUS=ready: model " in ready
    upgraded.drop("n.png", png_bytes(1))
    proc.wait_rows(1)
    wait_until(lambda: sum(m == "WATCHDOG=1" for m in messages()) >= 3, 10, "watchdog pings")
    assert proc.stop() == 0
    last = messages()
    stopping = [m for m in last if "STOPPING=1" in m]
    assert stopping, last
    assert last.index(stopping[0]) > last.index(ready)


def test_abstract_namespace_socket(daemon: Callable[..., DaemonProcess], upgraded: Workspace) -> None:
    name = f"inspectd-test-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(30)
    try:
        proc = daemon(env={"NOTIFY_SOCKET": "@" + name}, ready=False)
        got: list[str] = []
        while not any("READY=1" in m for m in got):
            got.append(sock.recv(4096).decode())
        assert proc.stop() == 0
    finally:
        sock.close()


def test_stalled_pipeline_stops_watchdog_pings(
    daemon: Callable[..., DaemonProcess],
    upgraded: Workspace,
    notify_socket: tuple[str, Callable[[], list[str]]],
) -> None:
    """SIGSTOP freezes everything, so instead the pipeline thread is stalled with a tiny stall window:
    the pings must stop while a batch is blocked on a database lock held by another process."""
    import sqlalchemy as sa

    upgraded.write_config(
        systemd={"stall_after_s": 1.0},
        database={"url": upgraded.db_url, "busy_timeout_s": 60.0, "retry_initial_s": 0.2, "retry_max_s": 1.0},
    )
    address, messages = notify_socket
    proc = daemon(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    wait_until(lambda: sum(m == "WATCHDOG=1" for m in messages()) >= 2, 10, "pings")
    engine = sa.create_engine(upgraded.db_url)
    conn = engine.connect()
    conn.exec_driver_sql("BEGIN EXCLUSIVE")  # the daemon's insert now waits in SQLite's busy handler
    try:
        upgraded.drop("stuck.png", png_bytes(2))
        wait_until(lambda: proc.events("pipeline.stalled"), 15, "the stall to be noticed")
        before = sum(m == "WATCHDOG=1" for m in messages())
        time.sleep(1.0)
        assert sum(m == "WATCHDOG=1" for m in messages()) == before
    finally:
        conn.exec_driver_sql("ROLLBACK")
        conn.close()
        engine.dispose()
    proc.wait_rows(1)
    wait_until(lambda: sum(m == "WATCHDOG=1" for m in messages()) > before, 10, "pings resumed")
    assert proc.stop() == 0
