"""Shared fixtures: real files, a real daemon process, real SQLite (and PostgreSQL through pg_virtualenv)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import sqlalchemy as sa

from inspectd.daemon.commit import archive
from inspectd.ops.synth import SynthSpec, generate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _machine_share(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Under ``pytest -n`` (make test): a test marked ``exclusive`` changes what every process on the
    machine shares (it stops the PostgreSQL cluster, lowers the kernel's inotify queue), so it runs alone:
    it takes a lock file exclusively, every other test takes it shared. Without xdist it costs nothing."""
    lock = tmp_path_factory.getbasetemp().parent / "inspectd-tests.lock"  # one for all xdist workers
    with lock.open("a") as fh:
        exclusive = request.node.get_closest_marker("exclusive") is not None
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def png_bytes(
    seed: int, present: bool | None = None, spec: SynthSpec | None = None, ext: str = ".png"
) -> bytes:
    sample = generate(np.random.default_rng(seed), spec or SynthSpec(), present)
    ok, buf = cv2.imencode(ext, sample.image)
    assert ok
    return bytes(buf.tobytes())


WRITER = """
import os, sys, numpy as np, cv2
folder, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
for i in range(count):
    image = rng.integers(0, 255, (48, 64), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", image)
    tmp = os.path.join(folder, f".f{seed}-{i:05d}.png.tmp")
    with open(tmp, "wb") as fh:
        fh.write(buf.tobytes())
    os.rename(tmp, os.path.join(folder, f"f{seed}-{i:05d}.png"))
"""


def write_burst(folder: Path, count: int, seed: int) -> subprocess.Popen[bytes]:
    """A real writer process dropping ``count`` small, distinct PNGs (temporary name, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(count), str(seed)])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def metric(body: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a /metrics body (None when absent), whatever the label order."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


@dataclass
class Workspace:
    root: Path
    port: int
    db_url: str
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def incoming(self) -> Path:
        return self.root / "var" / "incoming"

    @property
    def processed(self) -> Path:
        return self.root / "var" / "processed"

    @property
    def quarantine(self) -> Path:
        return self.root / "var" / "quarantine"

    @property
    def models(self) -> Path:
        return self.root / "var" / "models"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    def write_config(self, **sections: dict[str, Any]) -> Path:
        merged: dict[str, dict[str, Any]] = {
            "database": {"url": self.db_url, "retry_initial_s": 0.2, "retry_max_s": 1.0},
            "http": {"listen": f"127.0.0.1:{self.port}"},
            "watch": {"settle_s": 0.2, "rescan_interval_s": 2.0},
            "log": {"format": "json", "level": "debug"},
            "model": {"num_threads": 1},
            "decode": {"workers": 2},
        }
        for name, values in {**self.extra, **sections}.items():
            merged.setdefault(name, {}).update(values)
        lines: list[str] = []

        def table(name: str, values: dict[str, Any]) -> None:
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, dict))
            for key, value in values.items():
                if isinstance(value, dict):
                    table(f"{name}.{key}", value)

        for name, values in merged.items():
            table(name, values)
        self.config.write_text("\n".join(lines) + "\n")
        return self.config

    def cli(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "inspectd", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"inspectd {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def rows(self) -> list[dict[str, Any]]:
        engine = sa.create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                result = conn.execute(sa.text("SELECT * FROM results ORDER BY id"))
                return [dict(r._mapping) for r in result]
        finally:
            engine.dispose()

    def archived(self) -> list[Path]:
        return sorted(p for p in self.processed.rglob("*") if p.is_file())

    def quarantined(self) -> list[Path]:
        return sorted(
            p
            for p in self.quarantine.rglob("*")
            if not p.name.endswith(".reason.json") and p.parent != self.quarantine
        )

    def waiting(self) -> list[Path]:
        """What is in incoming, but a shared folder's ``.<token>.inspectd-alive`` marks (leases.py)."""
        if not self.incoming.exists():
            return []
        return sorted(p for p in self.incoming.iterdir() if not p.name.endswith(archive.ALIVE_SUFFIX))

    def drop(self, name: str, content: bytes) -> Path:
        """Write a file the way a careful camera does: a hidden temporary name, then a rename."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        tmp = self.incoming / f".{name}.{uuid.uuid4().hex[:6]}"
        tmp.write_bytes(content)
        final = self.incoming / name
        tmp.rename(final)
        return final


class DaemonProcess:
    """`inspectd run` in a child process, its JSON log lines collected from stderr."""

    def __init__(self, ws: Workspace, env: dict[str, str] | None = None) -> None:
        self.ws = ws
        self.started = time.monotonic()
        self.log_path = ws.root / f"daemon-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inspectd", "--config", str(ws.config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is None or event.get("event") == name:
                out.append(event)
        return out

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ws.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                return self.get("/readyz")[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout, "daemon ready", interval=0.1)

    def wait_rows(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_path.read_text()}")
            rows = self.ws.rows()
            return rows if len(rows) >= count else None

        return list(wait_until(enough, timeout, f"{count} rows"))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    workspace = Workspace(tmp_path, free_port(), f"sqlite:///{tmp_path / 'var' / 'inspectd.db'}")
    workspace.write_config()
    return workspace


@pytest.fixture
def upgraded(ws: Workspace) -> Workspace:
    ws.cli("db", "upgrade")
    return ws


@pytest.fixture
def daemon(upgraded: Workspace) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(env: dict[str, str] | None = None, ready: bool = True) -> DaemonProcess:
        proc = DaemonProcess(upgraded, env)
        started.append(proc)
        if ready:
            proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.kill()


# --- PostgreSQL through pg_virtualenv -----------------------------------------------------------------


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the pg_virtualenv cluster (make test runs pytest inside one)."""
    if not os.environ.get("PG_CLUSTER_CONF_ROOT") and not os.environ.get("PGHOST"):
        if os.environ.get("INSPECTD_REQUIRE_POSTGRES"):
            pytest.fail("INSPECTD_REQUIRE_POSTGRES is set but no PostgreSQL is reachable (PG* unset)")
        pytest.skip("no PostgreSQL: run under pg_virtualenv (make test does)")
    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_url("postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield pg_url(name)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def pg_cluster() -> tuple[str, str, str]:
    """(version, name, port) of the pg_virtualenv cluster: pg_virtualenv does not always export PGPORT."""
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True)
    for line in listing.stdout.splitlines():
        version, name, port = line.split()[:3]
        if name == "regress":
            return version, name, port
    raise AssertionError(f"no pg_virtualenv cluster in:\n{listing.stdout}")


def pg_url(database: str) -> str:
    user = os.environ.get("PGUSER", "postgres")
    password = os.environ.get("PGPASSWORD", "")
    host = os.environ.get("PGHOST", "localhost")
    port = os.environ.get("PGPORT") or pg_cluster()[2]
    auth = f"{user}:{password}@" if password else f"{user}@"
    if host.startswith("/"):
        return f"postgresql+psycopg://{auth}/{database}?host={host}&port={port}"
    return f"postgresql+psycopg://{auth}{host}:{port}/{database}"
