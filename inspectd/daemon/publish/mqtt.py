"""MQTT publishing: every committed result, from the outbox, until the broker acknowledges it.

Topics, under ``[mqtt] topic_prefix`` (default ``inspectd``) and the station's name:

- ``<prefix>/<station>/result``: one JSON message per committed result (every column of ``results``,
  as ``inspectd results --format jsonl`` prints it), QoS 1 by default. Delivery is at least once: a
  message may come twice (after an outage or a crash), and ``content_hash`` is its identity.
- ``<prefix>/<station>/status``: ``online`` (retained) once connected; ``offline`` (retained) at a clean
  stop, and as the last will, which the broker sends when the daemon dies or loses its connection.
- ``<prefix>/<station>/model``: the active model version (retained), again whenever it changes.

A result's outbox row is written in the transaction that commits the result (persist.py) and deleted
once the broker's PUBACK for its message arrived; what a crash, a kill or an outage leaves in the outbox
is sent again after the next connect. The publisher runs in its own thread (paho's network loop in
another): a broker that is down never slows or stops inspection, the backlog grows and is caught up.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from inspectd.core import db, logs
from inspectd.core.mqtt_config import MqttConfig
from inspectd.daemon.metrics import Metrics
from inspectd.daemon.publish.outbox import OutboxStore

log = logs.get("inspectd.mqtt")

IDLE_S = 0.25  # how long the publisher waits for a commit, or an acknowledgement, before it looks again
BACKLOG_EVERY_S = 1.0
DB_RETRY_S = 1.0
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 10  # seconds (paho takes whole ones)


@dataclass(frozen=True, slots=True)
class Topics:
    result: str
    status: str
    model: str

    @classmethod
    def of(cls, prefix: str, station: str) -> Topics:
        base = f"{prefix}/{station}"
        return cls(f"{base}/result", f"{base}/status", f"{base}/model")


def make_client(cfg: MqttConfig, station: str, topics: Topics) -> paho.Client:
    """A paho client with the last will, credentials and TLS of ``[mqtt]``; OSError for an unreadable
    password or certificate file (a configuration error at start)."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=cfg.client_id or f"inspectd-{station}", clean_session=True
    )
    client.will_set(topics.status, "offline", qos=1, retain=True)
    if cfg.username is not None:
        password = None
        if cfg.password_file is not None:
            lines = cfg.password_file.read_text().splitlines()
            password = lines[0] if lines else ""
        client.username_pw_set(cfg.username, password)
    if cfg.tls:
        certs = [p for p in (cfg.tls_ca_file, cfg.tls_cert_file, cfg.tls_key_file) if p is not None]
        for path in certs:
            path.read_bytes()  # unreadable: an OSError here, at start, not a failed handshake later
        client.tls_set(
            ca_certs=str(cfg.tls_ca_file) if cfg.tls_ca_file else None,
            certfile=str(cfg.tls_cert_file) if cfg.tls_cert_file else None,
            keyfile=str(cfg.tls_key_file) if cfg.tls_key_file else None,
        )
    client.max_inflight_messages_set(cfg.in_flight)
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    return client


class Publisher:
    def __init__(
        self,
        cfg: MqttConfig,
        station: str,
        engine: Engine,
        metrics: Metrics,
        model_version: Callable[[], str],
    ) -> None:
        self.cfg = cfg
        self.topics = Topics.of(cfg.topic_prefix, station)
        self.outbox = OutboxStore(engine, station)
        self.metrics = metrics
        self.model_version = model_version
        self.client = make_client(cfg, station, self.topics)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._connected = threading.Event()
        self._restart = threading.Event()  # a new connection: send again from the first unacknowledged
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self.metrics.mqtt_connected.set(0)
        self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        self.client.loop_start()
        self._thread.start()
        log.info("mqtt.starting", broker=f"{self.cfg.host}:{self.cfg.port}", topic=self.topics.result)

    def wake(self) -> None:
        """A batch was committed: look at the outbox now."""
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop publishing; ``offline`` (retained) when connected. What is unacknowledged stays queued."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self._connected.is_set():
            info = self.client.publish(self.topics.status, "offline", qos=1, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                info.wait_for_publish(timeout=min(2.0, timeout_s))
        self.client.disconnect()
        self.client.loop_stop()
        self.metrics.mqtt_connected.set(0)

    # --- paho's network thread: flags and queues only --------------------------------------------------

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.metrics.mqtt_failures.labels("connect").inc()
            log.error("mqtt.connect_refused", reason=str(reason))
            return
        client.publish(self.topics.status, "online", qos=1, retain=True)
        self._restart.set()
        self._connected.set()
        self._wake.set()
        self.metrics.mqtt_connected.set(1)
        log.info("mqtt.connected", broker=f"{self.cfg.host}:{self.cfg.port}")

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        self.metrics.mqtt_connected.set(0)
        if not self._stop.is_set():
            self.metrics.mqtt_failures.labels("connect").inc()
            log.warning("mqtt.disconnected", reason=str(reason), retry_within_s=RECONNECT_MAX_S)

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        self._acks.put(mid)

    # --- the publisher thread ------------------------------------------------------------------------

    def _run(self) -> None:
        state = _State()
        next_backlog = 0.0
        while not self._stop.is_set():
            if self._restart.is_set():
                self._restart.clear()
                state.restart()
            try:
                worked = self._acknowledge(state)
                if self._connected.is_set():
                    worked |= self._send(state)
                if time.monotonic() >= next_backlog:
                    self.metrics.mqtt_backlog.set(self.outbox.backlog())
                    next_backlog = time.monotonic() + BACKLOG_EVERY_S
            except SQLAlchemyError as exc:
                log.error("mqtt.outbox_unavailable", error=db.brief(exc), retry_in_s=DB_RETRY_S)
                self._stop.wait(DB_RETRY_S)
                continue
            if not worked:
                self._wake.wait(IDLE_S)
                self._wake.clear()

    def _acknowledge(self, state: _State) -> bool:
        """Delete the outbox rows of the messages the broker acknowledged (and of earlier tries)."""
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                break
            result_id = state.in_flight.pop(mid, None)
            if result_id is not None:
                state.acked.append(result_id)
        if not state.acked:
            return False
        self.outbox.acknowledged(state.acked)  # SQLAlchemyError: kept, deleted at the next try
        self.metrics.mqtt_published.inc(len(state.acked))
        state.acked.clear()
        return True

    def _send(self, state: _State) -> bool:
        version = self.model_version()
        if version != state.model_sent:
            info = self.client.publish(self.topics.model, version, qos=1, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                state.model_sent = version
        room = self.cfg.in_flight - len(state.in_flight)
        if room <= 0:
            return False
        rows = self.outbox.pending(state.cursor, room)
        for row in rows:
            payload = json.dumps(row, separators=(",", ":"))
            info = self.client.publish(self.topics.result, payload, qos=self.cfg.qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:  # the connection went: sent again after it
                self.metrics.mqtt_failures.labels("publish").inc()
                return False
            state.in_flight[info.mid] = row["id"]
            state.cursor = row["id"]
        return bool(rows)


class _State:
    """The publisher thread's own: messages awaiting their PUBACK, and how far the outbox was read."""

    def __init__(self) -> None:
        self.in_flight: dict[int, int] = {}  # paho message id -> result id
        self.acked: list[int] = []
        self.cursor = 0  # the last result id sent on this connection
        self.model_sent: str | None = None

    def restart(self) -> None:
        """A new connection: everything unacknowledged is sent again; so is the model version."""
        self.in_flight.clear()
        self.cursor, self.model_sent = 0, None
