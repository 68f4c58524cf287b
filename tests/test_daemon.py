"""The real daemon in a child process, fed by real writer processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import DaemonProcess, Workspace, metric, png_bytes, wait_until

pytestmark = pytest.mark.slow

Start = Callable[..., DaemonProcess]

SLOW_WRITER = """
import sys, time
data = open(sys.argv[1], 'rb').read()
with open(sys.argv[2], 'wb') as fh:
    step = len(data) // 8 + 1
    for i in range(0, len(data), step):
        fh.write(data[i:i + step]); fh.flush(); time.sleep(float(sys.argv[3]))
"""


def assert_accounted(ws: Workspace, files_in: int) -> None:
    """Every file is in exactly one place, and every distinct content has exactly one row."""
    rows = ws.rows()
    hashes = [r["content_hash"] for r in rows]
    assert len(hashes) == len(set(hashes))
    assert len(ws.archived()) + len(ws.quarantined()) + len(ws.waiting()) == files_in
    for r in rows:
        assert Path(r["stored_path"]).exists() or any(p.name == r["original_name"] for p in ws.waiting()), r


def test_every_writer_path_gives_exactly_one_row(daemon: Start, upgraded: Workspace, tmp_path: Path) -> None:
    proc = daemon()
    staging = tmp_path / "staging"  # a sibling folder on the same filesystem
    staging.mkdir()
    sources = {}
    for i, name in enumerate(["cp.png", "mv.png", "slow.png", "rsync.png", "pycopy.png", "tmpname.png"]):
        sources[name] = staging / name
        sources[name].write_bytes(png_bytes(100 + i))
    incoming = upgraded.incoming
    subprocess.run(["cp", str(sources["cp.png"]), str(incoming / "cp.png")], check=True)
    subprocess.run(["mv", str(sources["mv.png"]), str(incoming / "mv.png")], check=True)
    subprocess.run(["rsync", str(sources["rsync.png"]), str(incoming) + "/"], check=True)
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])",
            str(sources["pycopy.png"]),
            str(incoming / "pycopy.png"),
        ],
        check=True,
    )
    subprocess.run(
        [
            "sh",
            "-c",
            'cp "$1" "$2/tmpname.png.part" && mv "$2/tmpname.png.part" "$2/tmpname.png"',
            "sh",
            str(sources["tmpname.png"]),
            str(incoming),
        ],
        check=True,
    )
    slow = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(sources["slow.png"]), str(incoming / "slow.png"), "0.4"]
    )
    rows = proc.wait_rows(5, timeout=30)
    assert "slow.png" not in {r["original_name"] for r in rows}  # still being written
    assert slow.wait(30) == 0
    rows = proc.wait_rows(6, timeout=30)
    time.sleep(1.0)  # nothing more may arrive
    rows = upgraded.rows()
    assert sorted(r["original_name"] for r in rows) == sorted(sources)
    assert all(r["status"] == "ok" and r["verdict"] in ("present", "absent") for r in rows)
    assert upgraded.waiting() == []
    archived = {p.name: p.read_bytes() for p in upgraded.archived()}
    for name, src in sources.items():
        if src.exists():
            assert archived[name] == src.read_bytes(), name  # the slow file complete, not a prefix
    for r in rows:
        assert Path(r["stored_path"]).is_file()
        assert r["station"] == "station-1" and r["model_version"] and r["latency_s"] >= 0
    assert proc.stop() == 0


def test_files_present_at_start_are_processed(upgraded: Workspace, daemon: Start) -> None:
    for i in range(12):
        upgraded.drop(f"early-{i}.png", png_bytes(200 + i))
    proc = daemon()
    proc.wait_rows(12)
    wait_until(lambda: not upgraded.waiting(), 10, "incoming empty")
    assert proc.events("daemon.ready")[0]["files_at_start"] == 12
    assert proc.stop() == 0
    assert_accounted(upgraded, 12)


def test_corrupt_file_is_quarantined_and_daemon_keeps_going(upgraded: Workspace, daemon: Start) -> None:
    proc = daemon()
    upgraded.drop("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    upgraded.drop("notes.jpg", b"hello, I am text")
    proc.wait_rows(2)
    upgraded.drop("good.png", png_bytes(7))
    rows = proc.wait_rows(3)
    by_name = {r["original_name"]: r for r in rows}
    assert by_name["broken.png"]["status"] == "error"
    assert by_name["broken.png"]["error_reason"].startswith("decode_failed")
    assert by_name["good.png"]["status"] == "ok"
    quarantined = {p.name for p in upgraded.quarantined()}
    assert quarantined == {"broken.png", "notes.jpg"}
    notes = list(upgraded.quarantine.rglob("broken.png.reason.json"))
    assert json.loads(notes[0].read_text())["reason"] == "decode_failed"
    assert proc.get("/healthz")[0] == 200
    assert proc.stop() == 0


def test_same_bytes_twice_give_one_row(upgraded: Workspace, daemon: Start) -> None:
    proc = daemon()
    content = png_bytes(42)
    upgraded.drop("first.png", content)
    proc.wait_rows(1)
    upgraded.drop("second.png", content)
    upgraded.drop("first.png", content)  # even under the same name again
    wait_until(lambda: not upgraded.waiting(), 10, "incoming empty")
    time.sleep(0.5)
    rows = upgraded.rows()
    assert len(rows) == 1 and rows[0]["original_name"] == "first.png"
    assert len(upgraded.archived()) == 3  # nothing deleted: the copies are archived beside it
    assert len([e for e in proc.events("image.handled") if e["disposition"] == "duplicate"]) == 2
    assert proc.stop() == 0


def test_sigterm_mid_burst_loses_nothing(upgraded: Workspace, daemon: Start) -> None:
    upgraded.write_config(batch={"max_size": 4})
    proc = daemon()
    total = 300  # renamed in at once: far more than the daemon finishes before the stop reaches it
    staging = upgraded.root / "staging"
    staging.mkdir()
    for i in range(total):
        (staging / f"burst-{i:03d}.png").write_bytes(png_bytes(1000 + i))
    for i in range(total):
        (staging / f"burst-{i:03d}.png").rename(upgraded.incoming / f"burst-{i:03d}.png")
    wait_until(lambda: len(upgraded.rows()) >= 4, 30, "the first rows", interval=0.01)
    assert proc.stop() == 0
    rows = upgraded.rows()
    assert len(rows) < total, "stopped too late to test anything"
    assert_accounted(upgraded, total)
    assert proc.events("daemon.stopped")
    # a restart picks up exactly the rest
    again = daemon()
    again.wait_rows(total, timeout=60)
    wait_until(lambda: not upgraded.waiting(), 20, "incoming empty")
    assert again.stop() == 0
    assert len(upgraded.rows()) == total
    assert_accounted(upgraded, total)


@pytest.mark.parametrize("died", ["before_move", "between_link_and_unlink"])
def test_commit_before_move_crash_is_recovered(upgraded: Workspace, daemon: Start, died: str) -> None:
    """A row committed by a run that died before moving the file, or halfway (the archive links the file
    into place, then unlinks it from incoming): the next run finishes the move, no new row, no copy."""
    proc = daemon()
    content = png_bytes(9)
    upgraded.drop("x.png", content)
    rows = proc.wait_rows(1)
    assert proc.stop() == 0
    stored = Path(rows[0]["stored_path"])
    if died == "before_move":
        stored.rename(upgraded.incoming / "x.png")
    else:
        os.link(stored, upgraded.incoming / "x.png")
    again = daemon()
    wait_until(lambda: stored.exists() and not upgraded.waiting(), 10, "the file where its row says, only")
    assert again.stop() == 0
    assert len(upgraded.rows()) == 1
    assert [e["disposition"] for e in again.events("image.handled")] == ["recovered"]
    assert upgraded.archived() == [stored] and stored.read_bytes() == content


def test_http_endpoints(daemon: Start, upgraded: Workspace) -> None:
    proc = daemon()
    upgraded.drop("m.png", png_bytes(3))
    proc.wait_rows(1)
    status, body = proc.get("/metrics")
    assert status == 200
    assert metric(body, "inspectd_images_processed_total", status="ok", station="station-1") == 1
    assert metric(body, "inspectd_latency_seconds_count", station="station-1") == 1
    assert metric(body, "inspectd_model_info", station="station-1") == 1
    # which of the bundled version's two networks runs, and why: the one measured faster at load
    (chosen,) = proc.events("model.network")
    assert set(chosen["ms_per_input"]) == {"int8", "none"} and chosen["reason"].startswith("fastest here")
    network = "float" if chosen["network"] == "none" else chosen["network"]
    assert metric(body, "inspectd_model_info", network=network, network_reason=chosen["reason"]) == 1
    assert "_created" not in body
    status, body = proc.get("/readyz")
    assert status == 200 and json.loads(body) == {
        "ready": True,
        "checks": {"model": True, "database": True, "watcher": True, "decoders": True},
    }
    assert proc.get("/healthz") == (200, "ok\n")
    assert proc.get("/nope")[0] == 404
    assert proc.stop() == 0


def test_results_command(daemon: Start, upgraded: Workspace) -> None:
    proc = daemon()
    upgraded.drop("r1.png", png_bytes(11))
    upgraded.drop("r2.png", b"junk")
    proc.wait_rows(2)
    assert proc.stop() == 0
    lines = upgraded.cli("results", "--format", "jsonl").stdout.splitlines()
    objs = [json.loads(line) for line in lines]
    assert {o["original_name"] for o in objs} == {"r1.png", "r2.png"}
    assert all(len(o["content_hash"]) == 64 for o in objs)
    # every column of the migrated table, in both formats: a column added and not exported fails here
    columns = [c["name"] for c in sa.inspect(sa.create_engine(upgraded.db_url)).get_columns("results")]
    assert list(objs[0]) == columns
    errors = upgraded.cli("results", "--status", "error", "--format", "csv").stdout.splitlines()
    assert errors[0].split(",") == columns and len(errors) == 2 and "r2.png" in errors[1]
    assert upgraded.cli("results", "--since", "1h", "--format", "jsonl").stdout.count("\n") == 2
    assert upgraded.cli("results", "--since", "2099-01-01", "--format", "jsonl").stdout == ""
    table = upgraded.cli("results").stdout
    assert "r1.png" in table and "(2 results)" in table
    bad = upgraded.cli("results", "--since", "yesterday-ish", check=False)
    assert bad.returncode == 2 and "ISO" in bad.stderr


def test_refuses_a_database_that_is_behind(ws: Workspace) -> None:
    proc = DaemonProcess(ws)
    try:
        assert proc.proc.wait(60) == 78
    finally:
        proc.kill()
    failure = proc.events("startup.failed")[0]
    assert "inspectd db upgrade" in failure["error"]


def test_sighup_refuses_a_broken_model_and_keeps_the_old(daemon: Start, upgraded: Workspace) -> None:
    proc = daemon()
    active = (upgraded.models / "active").read_text().strip()
    broken = upgraded.models / "versions" / "broken-1"
    broken.mkdir()
    for item in (upgraded.models / "versions" / active).iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.tflite").write_bytes(b"garbage" * 100)
    meta = json.loads((broken / "metadata.json").read_text())
    meta["version"] = "broken-1"
    (broken / "metadata.json").write_text(json.dumps(meta))
    (upgraded.models / "active").write_text("broken-1\n")
    # the poll finds the new pointer and refuses it once; a refused pointer is not tried again
    wait_until(lambda: proc.events("model.reload_refused"), 10, "the refusal (polled)")
    assert proc.events("model.reload_refused")[0]["keeping"] == active
    _, body = proc.get("/metrics")
    assert metric(body, "inspectd_model_load_failures_total", station="station-1") == 1
    # SIGHUP forces one more try of the same pointer, refused the same way
    proc.signal(signal.SIGHUP)
    wait_until(lambda: len(proc.events("model.reload_refused")) == 2, 10, "the refusal (forced)")
    upgraded.drop("after.png", png_bytes(5))
    rows = proc.wait_rows(1)
    assert rows[0]["model_version"] == active
    _, body = proc.get("/metrics")
    assert metric(body, "inspectd_model_load_failures_total", station="station-1") == 2
    assert len(proc.events("model.reload_refused")) == 2
    assert proc.stop() == 0


def test_sighup_switches_to_a_new_good_model(daemon: Start, upgraded: Workspace) -> None:
    proc = daemon()
    active = (upgraded.models / "active").read_text().strip()
    source = upgraded.models / "versions" / active
    copy = upgraded.models / "versions" / "copy-2"
    copy.mkdir()
    for item in source.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    meta = json.loads((copy / "metadata.json").read_text())
    meta["version"] = "copy-2"
    (copy / "metadata.json").write_text(json.dumps(meta))
    upgraded.cli("models")  # lists both
    (upgraded.models / "active").write_text("copy-2\n")
    wait_until(lambda: proc.events("model.reloaded"), 10, "the reload (polled, no signal needed)")
    upgraded.drop("new.png", png_bytes(6))
    assert proc.wait_rows(1)[0]["model_version"] == "copy-2"
    assert proc.stop() == 0


def test_polling_observer(daemon: Start, upgraded: Workspace, tmp_path: Path) -> None:
    """The observer for network filesystems: no close events, readiness from size stability alone."""
    upgraded.write_config(watch={"observer": "polling", "poll_interval_s": 0.2, "settle_s": 0.3})
    proc = daemon()
    upgraded.drop("p1.png", png_bytes(31))
    staging = tmp_path / "stage.png"
    staging.write_bytes(png_bytes(32))
    subprocess.run(["cp", str(staging), str(upgraded.incoming / "p2.png")], check=True)
    rows = proc.wait_rows(2)
    assert {r["original_name"] for r in rows} == {"p1.png", "p2.png"}
    assert proc.stop() == 0


@pytest.mark.postgres
def test_postgres_database(upgraded: Workspace, postgres_url: str) -> None:
    upgraded.db_url = postgres_url
    upgraded.write_config()
    upgraded.cli("db", "upgrade")
    for i in range(5):
        upgraded.drop(f"pg-{i}.png", png_bytes(300 + i))
    upgraded.drop("pg-bad.png", b"nope")
    upgraded.drop("pg-dup.png", png_bytes(300))
    proc = DaemonProcess(upgraded)
    try:
        proc.wait_ready()
        proc.wait_rows(6)
        wait_until(lambda: not upgraded.waiting(), 10, "incoming empty")
        assert proc.stop() == 0
    finally:
        proc.kill()
    rows = upgraded.rows()
    assert len(rows) == 6 and sum(r["status"] == "error" for r in rows) == 1
    assert_accounted(upgraded, 7)


def test_memory_settings_apply_on_glibc() -> None:
    from inspectd.daemon import memory

    if memory.LIBC is None:
        pytest.skip("not glibc")
    assert memory.fix_mmap_threshold() is True
    memory.trim()
