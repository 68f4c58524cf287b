"""Fault injection with real processes: crashes, database outages, floods, hostile files, full disks.

Every test ends with the exact accounting: files in = rows out = files archived + files quarantined
(+ files recorded as duplicates of an existing row, + files that vanished before they could be read).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DaemonProcess, Workspace, metric, pg_cluster, png_bytes, wait_until, write_burst
from tests.images import encode, png_bomb

pytestmark = pytest.mark.slow

Start = Callable[..., DaemonProcess]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def account(ws: Workspace, files_in: int, duplicates: int = 0) -> None:
    rows = ws.rows()
    assert len({r["content_hash"] for r in rows}) == len(rows)
    assert ws.waiting() == [], ws.waiting()[:5]
    archived, quarantined = ws.archived(), ws.quarantined()
    assert len(rows) + duplicates == files_in
    assert len(archived) + len(quarantined) == files_in
    for r in rows:
        assert Path(r["stored_path"]).exists() or Path(r["stored_path"]).is_symlink(), r["stored_path"]


# --- 1. crash safety ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_repeated_crashes_during_a_burst(daemon: Start, upgraded: Workspace, how: str) -> None:
    upgraded.write_config(batch={"max_size": 16}, watch={"settle_s": 0.2, "rescan_interval_s": 1.0})
    total = 400
    writer = write_burst(upgraded.incoming, total, 1)
    rng = random.Random(7)
    for _ in range(5):
        proc = daemon()
        time.sleep(rng.uniform(0.2, 1.2))
        if how == "kill9":
            proc.kill()  # SIGKILL to the whole process group, at a random moment
        else:
            assert proc.stop() == 0
    assert writer.wait(60) == 0
    last = daemon()
    last.wait_rows(total, timeout=120)
    wait_until(lambda: not upgraded.waiting(), 30, "incoming empty")
    assert last.stop() == 0
    account(upgraded, total)


# --- 2. database outages -----------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.exclusive  # stops the cluster every PostgreSQL test uses
def test_postgres_outage(upgraded: Workspace, postgres_url: str) -> None:
    version, name, _ = pg_cluster()
    upgraded.db_url = postgres_url
    upgraded.write_config(batch={"max_size": 16})  # retries 1 s apart at most (the tests' config)
    upgraded.cli("db", "upgrade")
    proc = DaemonProcess(upgraded)
    try:
        proc.wait_ready()
        first = write_burst(upgraded.incoming, 150, 2)
        assert first.wait(60) == 0
        wait_until(lambda: len(upgraded.rows()) >= 20, 60, "rows before the outage")
        subprocess.run(["pg_ctlcluster", version, name, "stop", "-m", "fast"], check=True)
        down_at = time.monotonic()
        second = write_burst(upgraded.incoming, 150, 3)  # files keep arriving during the outage
        assert second.wait(60) == 0

        def not_ready() -> bool:
            status, body = proc.get("/readyz")
            return status == 503 and json.loads(body)["checks"]["database"] is False

        wait_until(not_ready, 30, "/readyz to report the database")
        metrics = proc.get("/metrics")[1]
        assert metric(metrics, "inspectd_db_up") == 0
        assert proc.events("db.unavailable")
        rss_during = rss_mib(proc.proc.pid)
        time.sleep(max(0.0, 12 - (time.monotonic() - down_at)))  # a 12 s outage
        assert proc.proc.poll() is None
        assert rss_mib(proc.proc.pid) < rss_during + 50  # files wait on disk, not in memory
        subprocess.run(["pg_ctlcluster", version, name, "start"], check=True)
        proc.wait_rows(300, timeout=120)
        wait_until(lambda: proc.get("/readyz")[0] == 200, 30, "ready again")
        wait_until(lambda: not upgraded.waiting(), 30, "incoming empty")
        assert (metric(proc.get("/metrics")[1], "inspectd_db_retries_total") or 0) > 0
        assert proc.stop() == 0
    finally:
        subprocess.run(["pg_ctlcluster", version, name, "start"], capture_output=True)
        proc.kill()
    account(upgraded, 300)


def test_sqlite_database_is_locked(daemon: Start, upgraded: Workspace) -> None:
    import sqlalchemy as sa

    upgraded.write_config(
        database={"url": upgraded.db_url, "busy_timeout_s": 0.3, "retry_initial_s": 0.2, "retry_max_s": 0.5}
    )
    proc = daemon()
    engine = sa.create_engine(upgraded.db_url)
    conn = engine.connect()
    conn.exec_driver_sql("BEGIN EXCLUSIVE")
    try:
        for i in range(10):
            upgraded.drop(f"locked-{i}.png", png_bytes(900 + i))
        wait_until(
            lambda: any("locked" in e["error"] for e in proc.events("db.unavailable")),
            20,
            "database is locked",
        )
        wait_until(lambda: proc.get("/readyz")[0] == 503, 10, "not ready")
    finally:
        conn.exec_driver_sql("ROLLBACK")
        conn.close()
        engine.dispose()
    proc.wait_rows(10)
    wait_until(lambda: proc.get("/readyz")[0] == 200, 15, "ready again")
    assert proc.stop() == 0
    account(upgraded, 10)


# --- 3. floods ---------------------------------------------------------------------------------------


@pytest.fixture
def tiny_inotify_queue() -> Iterator[bool]:
    """A 64-event inotify queue for instances created meanwhile (the limit is read at creation)."""
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    try:
        old = knob.read_text()
        knob.write_text("64")
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        knob.write_text(old)


@pytest.mark.exclusive  # the kernel's inotify limit is one for every process
def test_flood_of_ten_thousand_files_with_inotify_overflow(
    upgraded: Workspace, tiny_inotify_queue: bool
) -> None:
    upgraded.write_config(
        watch={"settle_s": 0.2, "rescan_interval_s": 2.0},
        batch={"max_size": 64},
        log={"format": "json", "level": "info"},
    )
    proc = DaemonProcess(upgraded)
    try:
        proc.wait_ready()
        if tiny_inotify_queue:
            Path("/proc/sys/fs/inotify/max_queued_events").write_text("16384")  # only the daemon's is tiny
        start_rss = rss_mib(proc.proc.pid)
        total = 10_000
        writers = [write_burst(upgraded.incoming, total // 4, 10 + i) for i in range(4)]
        backlog_seen = 0.0
        peak_rss = start_rss
        while any(w.poll() is None for w in writers) or len(upgraded.rows()) < total:
            metrics = proc.get("/metrics")[1]
            for name in ("inspectd_queue_depth_files", "inspectd_incoming_pending_files"):
                backlog_seen = max(backlog_seen, metric(metrics, name, station="station-1") or 0.0)
            peak_rss = max(peak_rss, rss_mib(proc.proc.pid))
            assert proc.proc.poll() is None
            time.sleep(0.5)
            if time.monotonic() - proc.started > 400:
                raise AssertionError(f"only {len(upgraded.rows())} rows after 400 s")
        assert all(w.wait() == 0 for w in writers)
        wait_until(lambda: not upgraded.waiting(), 60, "incoming empty")
        assert backlog_seen > 100, "the queue depth metrics never showed the backlog"
        assert peak_rss < start_rss + 300, (start_rss, peak_rss)
        if tiny_inotify_queue:
            assert proc.events("rescan.found"), "events were lost, yet no rescan found files"
        assert proc.stop() == 0
    finally:
        proc.kill()
    account(upgraded, 10_000)


# --- 4. hostile input --------------------------------------------------------------------------------


SLOW = """
import sys, time
data = open(sys.argv[1], 'rb').read()
with open(sys.argv[2], 'wb') as fh:
    for i in range(10):
        fh.write(data[i * len(data) // 10:(i + 1) * len(data) // 10]); fh.flush(); time.sleep(1.0)
"""


def test_hostile_corpus(daemon: Start, upgraded: Workspace, tmp_path: Path) -> None:
    proc = daemon()
    inc = upgraded.incoming
    good = png_bytes(1, present=True)
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes(2))
    expected: dict[str, str | None] = {  # file name -> error reason (None: a valid image)
        "zero.png": "empty_file",
        "truncated.png": "decode_failed",
        "truncated.jpg": "decode_failed",
        "text.png": "decode_failed",
        "tiny.png": "too_small",
        "sliver.png": "extreme_aspect_ratio",
        "bomb.png": "too_many_pixels",
        "link.png": "symlink",
        "folder.png": "not_a_file",
        "four channels.png": None,
        "sixteen-bit.tif": None,
        "ünïcödé ✓.png": None,
        "new\nline.png": None,
        "slow.png": None,
        "same": None,  # same-1.png or same-2.png, whichever a decode worker finished first
    }
    rng = np.random.default_rng(3)
    jpeg = encode(rng.integers(0, 255, (300, 300), np.uint8), ".jpg")
    (inc / "zero.png").write_bytes(b"")
    (inc / "truncated.png").write_bytes(good[: len(good) // 3])
    (inc / "truncated.jpg").write_bytes(jpeg[:400])
    (inc / "text.png").write_text("GIF89a? no, just text\n" * 20)
    (inc / "tiny.png").write_bytes(encode(np.zeros((1, 1), np.uint8), ".png"))
    (inc / "sliver.png").write_bytes(encode(np.zeros((5000, 20), np.uint8), ".png"))
    (inc / "bomb.png").write_bytes(png_bomb(100_000, 100_000))
    (inc / "link.png").symlink_to(outside)
    (inc / "folder.png").mkdir()
    (inc / "four channels.png").write_bytes(encode(rng.integers(0, 255, (200, 240, 4), np.uint8), ".png"))
    (inc / "sixteen-bit.tif").write_bytes(encode(rng.integers(0, 65535, (200, 240), np.uint16), ".tif"))
    (inc / "ünïcödé ✓.png").write_bytes(png_bytes(4))
    (inc / "new\nline.png").write_bytes(png_bytes(5))
    upgraded.drop("same-1.png", png_bytes(6))
    upgraded.drop("same-2.png", png_bytes(6))  # the same image under a second name: no second row
    staged = tmp_path / "slow-source.png"
    staged.write_bytes(png_bytes(7))
    slow = subprocess.Popen([sys.executable, "-c", SLOW, str(staged), str(inc / "slow.png")])
    vanishing = inc / "vanishing.png"
    vanishing.write_bytes(png_bytes(8))
    vanishing.unlink()  # gone before it is opened: no row, no crash; opened first: recorded, its bytes kept

    rows = proc.wait_rows(len(expected) - 1, timeout=30)
    assert "slow.png" not in {r["original_name"] for r in rows}  # not taken while being written
    assert slow.wait(30) == 0
    rows = proc.wait_rows(len(expected), timeout=30)
    wait_until(lambda: not upgraded.waiting(), 15, "incoming empty")
    by_name = {r["original_name"]: r for r in upgraded.rows()}
    twins = {"same-1.png", "same-2.png"} & set(by_name)
    assert len(twins) == 1  # the same image under a second name: one row, not two
    by_name["same"] = by_name.pop(twins.pop())
    # a decode worker may open vanishing.png between its write and its unlink (a loaded machine): then
    # its bytes were read and are recorded and archived from the open descriptor, as any file deleted
    # after it was read
    read_first = by_name.pop("vanishing.png", None)
    if read_first is not None:
        assert read_first["status"] == "ok"
        assert Path(read_first["stored_path"]).read_bytes() == png_bytes(8)
    assert set(by_name) == set(expected)
    for name, reason in expected.items():
        row = by_name[name]
        if reason is None:
            assert row["status"] == "ok", (name, row["error_reason"])
        else:
            assert row["status"] == "error" and row["error_reason"].startswith(reason + ":"), (name, row)
            assert (
                Path(row["stored_path"]).parent / (Path(row["stored_path"]).name + ".reason.json")
            ).exists()
    assert outside.read_bytes() == png_bytes(2)  # the link's target was never touched or moved
    assert Path(by_name["link.png"]["stored_path"]).is_symlink()
    assert Path(by_name["folder.png"]["stored_path"]).is_dir()
    assert by_name["slow.png"]["size_bytes"] == staged.stat().st_size  # complete, not a prefix
    assert proc.get("/healthz")[0] == 200 and proc.proc.poll() is None
    assert proc.stop() == 0
    archived = upgraded.archived()
    quarantined = [p for p in upgraded.quarantine.glob("*/*") if not p.name.endswith(".reason.json")]
    assert len(archived) == 7 + (read_first is not None)  # the 6 valid images and the duplicate copy
    assert len(quarantined) == 9
    assert len(upgraded.rows()) + 1 == len(archived) + len(quarantined)  # one duplicate, no row


# --- 5. model faults ---------------------------------------------------------------------------------


@pytest.mark.train
def test_model_with_another_input_size_after_reload(
    daemon: Start, upgraded: Workspace, tmp_path: Path
) -> None:
    from inspectd.train.convert import convert, export_version
    from inspectd.train.nets.small import small_cnn

    version_dir = tmp_path / "v64"
    x = np.random.default_rng(0).random((4, 64, 64, 1), np.float32)
    converted = convert(small_cnn((64, 64)), (64, 64), "none", x, x, np.array([0, 1, 0, 1]))
    export_version(converted, version_dir, "size64-1", 0.5, (1.0, 0.0), x, {}, {})
    proc = daemon()
    upgraded.drop("before.png", png_bytes(1))
    proc.wait_rows(1)
    from inspectd.core.registry import ModelRegistry

    registry = ModelRegistry(upgraded.models)
    registry.install(version_dir)
    upgraded.cli("promote", "size64-1")
    wait_until(lambda: proc.events("model.reloaded"), 10, "the reload")
    upgraded.drop("after.png", png_bytes(2))
    rows = proc.wait_rows(2)
    assert rows[1]["model_version"] == "size64-1" and rows[1]["status"] == "ok"
    assert proc.stop() == 0


# --- 6. full disk, unusable archive folder -----------------------------------------------------------


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_on_processed(daemon: Start, upgraded: Workspace, tiny_filesystem: Path) -> None:
    upgraded.write_config(paths={"processed": str(tiny_filesystem)}, watch={"rescan_interval_s": 1.0})
    proc = daemon()
    names = [f"big-{i}.png" for i in range(6)]
    for i, name in enumerate(names):
        upgraded.drop(name, png_bytes(40 + i))  # ~250 KB each: the second one no longer fits
    proc.wait_rows(6)
    wait_until(lambda: any(e.get("error") for e in proc.events("archive.failed")), 20, "archive.failed")
    assert upgraded.waiting(), "files whose move failed must stay in incoming"
    assert metric(proc.get("/metrics")[1], "inspectd_files_total", disposition="deferred")
    assert not list(tiny_filesystem.rglob(".*inspectd-tmp")), "a partial copy was left behind"
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_filesystem)], check=True)  # space freed
    wait_until(lambda: not upgraded.waiting(), 20, "the deferred files moved on a later rescan")
    assert proc.stop() == 0
    rows = upgraded.rows()
    assert len(rows) == 6
    assert sorted(p.name for p in tiny_filesystem.rglob("*.png")) == sorted(names)
    assert [e["disposition"] for e in proc.events("image.handled")].count("recovered") >= 1


def test_archive_folder_unusable(daemon: Start, upgraded: Workspace) -> None:
    """Today's processed folder cannot be created (a file is in the way): files wait, nothing is lost."""
    proc = daemon()
    today = time.strftime("%Y-%m-%d", time.gmtime())
    upgraded.processed.mkdir(parents=True, exist_ok=True)
    blocker = upgraded.processed / today
    blocker.write_text("in the way")
    upgraded.drop("blocked.png", png_bytes(77))
    proc.wait_rows(1)
    wait_until(lambda: proc.events("archive.failed"), 10, "archive.failed")
    assert [p.name for p in upgraded.waiting()] == ["blocked.png"]
    blocker.unlink()
    wait_until(lambda: not upgraded.waiting(), 20, "moved after the folder became usable")
    assert proc.stop() == 0
    assert len(upgraded.rows()) == 1 and (upgraded.processed / today / "blocked.png").is_file()
