"""Results reach the line over MQTT, exactly as reliably as the rows: a real broker (Debian's mosquitto,
started here on a free loopback port), real daemons, real files, a subscriber in this process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import DaemonProcess, Workspace, free_port, png_bytes, wait_until

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
if not Path(MOSQUITTO).exists() and os.environ.get("INSPECTD_REQUIRE_MOSQUITTO"):
    raise RuntimeError("INSPECTD_REQUIRE_MOSQUITTO is set but mosquitto is not installed (make system-deps)")
pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed")
Start = Callable[..., DaemonProcess]


class Broker:
    """mosquitto on 127.0.0.1:PORT, in the foreground of a child process; stop() and start() again keep
    the port (what a broker restart looks like to its clients)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        wait_until(self._listening, 10, "mosquitto listening")

    def _listening(self) -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Subscriber:
    """Every message on the topics, as they arrive (retained ones included), reconnecting as needed."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{port}", clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect_async("127.0.0.1", port, 30)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def on(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def hashes(self) -> set[str]:
        return {json.loads(p)["content_hash"] for p in self.on("/result")}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


def configure(ws: Workspace, broker: Broker, **mqtt: Any) -> None:
    ws.write_config(mqtt={"url": f"mqtt://127.0.0.1:{broker.port}", "topic_prefix": "line", **mqtt})


def metric(proc: DaemonProcess, name: str) -> float:
    for line in proc.get("/metrics")[1].splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def test_one_message_per_result_of_a_burst(daemon: Start, upgraded: Workspace, broker: Broker) -> None:
    configure(upgraded, broker)
    subscriber = Subscriber(broker.port, "line/#")
    try:
        proc = daemon()
        wait_until(lambda: subscriber.on("/status")[-1:] == [b"online"], 15, "status online")
        for i in range(300):
            upgraded.drop(f"burst-{i:03d}.png", png_bytes(5000 + i))
        rows = proc.wait_rows(300, timeout=120)
        wait_until(lambda: len(subscriber.on("/result")) >= 300, 60, "300 result messages")
        time.sleep(1.0)  # nothing more arrives: one message per result
        messages = [json.loads(p) for p in subscriber.on("/result")]
        assert len(messages) == 300
        assert {m["content_hash"] for m in messages} == {r["content_hash"] for r in rows}
        first = next(m for m in messages if m["id"] == rows[0]["id"])
        assert set(first) == set(rows[0]) and first["station"] == rows[0]["station"]
        assert subscriber.on("/model")[-1].decode() == rows[0]["model_version"]
        wait_until(lambda: metric(proc, "inspectd_mqtt_backlog_results") == 0, 10, "an empty backlog")
        assert metric(proc, "inspectd_mqtt_published_total") == 300
        assert metric(proc, "inspectd_mqtt_connected") == 1
        assert proc.stop() == 0
        wait_until(lambda: subscriber.on("/status")[-1:] == [b"offline"], 10, "status offline at stop")
    finally:
        subscriber.close()


def test_nothing_lost_through_a_broker_outage_and_a_kill(
    daemon: Start, upgraded: Workspace, broker: Broker
) -> None:
    """The broker stops for 10 s mid-burst (inspection goes on), the daemon is kill -9ed once: every
    result's hash arrives at least once after recovery, the backlog returns to 0, and the status topic
    says offline after the kill (the last will) and online after the restart."""
    configure(upgraded, broker)
    subscriber = Subscriber(broker.port, "line/#")
    try:
        proc = daemon()
        wait_until(lambda: subscriber.on("/status")[-1:] == [b"online"], 15, "status online")
        for i in range(100):
            upgraded.drop(f"a-{i:03d}.png", png_bytes(6000 + i))
        proc.wait_rows(100, timeout=60)
        broker.stop()
        outage = time.monotonic()
        for i in range(100):
            upgraded.drop(f"b-{i:03d}.png", png_bytes(6100 + i))
        proc.wait_rows(200, timeout=60)  # inspection does not wait for the broker
        assert time.monotonic() - outage < 10  # all while the broker is still down
        wait_until(lambda: metric(proc, "inspectd_mqtt_backlog_results") > 0, 10, "a backlog")
        assert metric(proc, "inspectd_mqtt_connected") == 0
        proc.kill()  # while the broker is down: what it had not sent is only in the outbox
        time.sleep(max(0.0, 10 - (time.monotonic() - outage)))
        broker.start()
        wait_until(lambda: subscriber.client.is_connected(), 15, "the subscriber back")
        proc = daemon()
        for i in range(100):
            upgraded.drop(f"c-{i:03d}.png", png_bytes(6200 + i))
        rows = proc.wait_rows(300, timeout=60)
        expected = {r["content_hash"] for r in rows}
        wait_until(lambda: expected <= subscriber.hashes(), 60, "every result's message")
        wait_until(lambda: metric(proc, "inspectd_mqtt_backlog_results") == 0, 15, "an empty backlog")
        statuses = subscriber.on("/status")
        assert statuses[-1] == b"online"
        proc.kill()
        wait_until(lambda: subscriber.on("/status")[-1:] == [b"offline"], 30, "the last will")
    finally:
        subscriber.close()


def test_a_bad_mqtt_config_is_named(upgraded: Workspace) -> None:
    upgraded.write_config(mqtt={"url": "http://broker:1883"})
    result = upgraded.cli("run", check=False, timeout=60)
    assert result.returncode == 78 and "mqtt.url" in result.stderr and "Traceback" not in result.stderr
    upgraded.write_config(mqtt={"url": "mqtt://127.0.0.1:1883", "username": "u", "password_file": "nope"})
    result = upgraded.cli("run", check=False, timeout=60)
    assert result.returncode == 78 and "nope" in result.stderr and "Traceback" not in result.stderr
