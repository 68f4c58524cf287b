"""Several stations on one database, several workers on one folder (claims with leases), shared models."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from inspectd.core import db
from inspectd.core.registry import bundled_model_dir, read_meta
from inspectd.daemon.commit import archive
from inspectd.daemon.commit.persist import Store
from inspectd.daemon.intake.claims import ClaimBook, ClaimState
from inspectd.daemon.intake.leases import Leases
from tests.conftest import DaemonProcess, Workspace, free_port, metric, png_bytes, wait_until, write_burst


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'c.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = db.make_engine(url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def test_claims_have_one_holder_and_expired_leases_are_taken_over(any_db: sa.Engine) -> None:
    a = ClaimBook(any_db, "a", lease_s=2.0, worker="a@host")  # long enough for a loaded CI machine
    b = ClaimBook(any_db, "b", lease_s=30.0, worker="b@host")
    assert a.claim("h1", "/in/x.png").state is ClaimState.CLAIMED
    held = b.claim("h1", "/in/x.png")
    assert held.state is ClaimState.HELD and held.holder == "a@host"
    assert a.claim("h1", "/in/x.png").state is ClaimState.CLAIMED  # its own claim, renewed
    time.sleep(2.3)  # a's lease runs out (the database's clock)
    assert b.claim("h1", "/in/x.png").state is ClaimState.TAKEN_OVER
    assert a.claim("h1", "/in/x.png").state is ClaimState.HELD
    # the result's commit ends the claim, and only the holder's
    Store(any_db, a).insert([], ["h1"])
    assert b.claim("h1", "/in/x.png").state is ClaimState.CLAIMED
    Store(any_db, b).insert([], ["h1"])
    assert a.claim("h1", "/in/x.png").state is ClaimState.CLAIMED
    with any_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM claims")).scalar() == 1
    assert a.purge_stale() == 0
    # an image already recorded needs no claim; an expired claim on one is purged
    now = datetime.now(UTC)
    row = {"content_hash": "h2", "original_name": "y.png", "stored_path": "/p/y.png", "size_bytes": 1}
    row |= {"received_at": now, "processed_at": now, "latency_s": 0.0, "status": "error"}
    row |= {"error_reason": "x: y", "station": "a"}
    assert a.claim("h2", "/in/y.png").state is ClaimState.CLAIMED
    time.sleep(2.3)
    Store(any_db).insert([row])  # recorded by someone else; a's claim is left behind, expired
    assert b.claim("h2", "/in/y.png").state is ClaimState.KNOWN
    assert a.purge_stale() == 1
    with any_db.connect() as conn:
        assert conn.execute(sa.text("SELECT content_hash FROM claims")).scalars().all() == ["h1"]
    # a batch in one transaction: won, held by another, already recorded
    assert a.claim("h1", "/in/x.png").state is ClaimState.CLAIMED  # renewed: a fresh lease
    many = b.claim_many({"h1": "/in/x.png", "h2": "/in/y.png", "h3": "/in/z.png"})
    assert {h: r.state for h, r in many.items()} == {
        "h1": ClaimState.HELD,
        "h2": ClaimState.KNOWN,
        "h3": ClaimState.CLAIMED,
    }
    assert many["h1"].holder == "a@host"


def test_a_live_worker_keeps_its_claims_past_the_lease_and_a_hung_one_loses_them(
    any_db: sa.Engine, tmp_path: Path
) -> None:
    """The lease keeper renews every claim its worker holds while the main loop is alive; once the loop
    is hung it renews nothing, and the claims are taken over when the lease runs out."""
    a = ClaimBook(any_db, "a", lease_s=1.5, worker="a@host")
    b = ClaimBook(any_db, "b", lease_s=30.0, worker="b@host")
    assert a.claim_many({"h1": "/in/x.png", "h2": "/in/y.png"})["h2"].state is ClaimState.CLAIMED
    b.claim("h9", "/in/z.png")
    loop_alive = True
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    keeper = Leases(a, incoming, archive.token_for("a"), lambda: loop_alive)
    for _ in range(4):  # 2 s of a daemon busy with other work: longer than its lease
        assert keeper.renew()
        time.sleep(0.5)
    assert (incoming / archive.alive_name(archive.token_for("a"))).exists()
    assert b.claim("h1", "/in/x.png").state is ClaimState.HELD
    assert a.renew() == 2  # its own two, not b's
    a.forget(["h2"])  # its batch is done, whatever became of it (changed, gone): no longer renewed
    assert a.renew() == 1
    # incoming cannot take the alive mark (read-only, say): the claims are renewed all the same
    broken = Leases(a, tmp_path / "not-a-folder", archive.token_for("a"), lambda: True)
    (tmp_path / "not-a-folder").write_bytes(b"")
    time.sleep(1.0)
    assert not broken.renew()  # the mark failed...
    time.sleep(1.0)
    assert b.claim("h1", "/in/x.png").state is ClaimState.HELD  # ...and the lease was renewed
    loop_alive = False  # hung: the keeper lets the leases run out
    assert not keeper.renew()
    time.sleep(1.8)
    assert b.claim("h1", "/in/x.png").state is ClaimState.TAKEN_OVER
    keeper.stop()
    assert not list(incoming.iterdir())  # a clean stop leaves no mark


@pytest.mark.postgres
def test_concurrent_db_upgrades_are_serialised(postgres_url: str, tmp_path: Path) -> None:
    ws = Workspace(tmp_path, free_port(), postgres_url)
    ws.write_config()
    cmd = [sys.executable, "-m", "inspectd", "--config", str(ws.config), "db", "upgrade"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    engine = db.make_engine(postgres_url)
    current, head = db.schema_state(engine)
    assert current == head
    engine.dispose()


def _station(root: Path, shared: Path, name: str, url: str, **sections: dict[str, Any]) -> Workspace:
    ws = Workspace(root / name, free_port(), url)
    ws.root.mkdir(parents=True)
    folders = {k: str(shared / k) for k in ("incoming", "processed", "quarantine", "models")}
    ws.write_config(station={"name": name}, paths=folders, **sections)
    return ws


def _waiting(incoming: Path) -> list[Path]:
    """Files in incoming, but the live daemons' alive marks (leases.py)."""
    return [p for p in incoming.iterdir() if not p.name.endswith(archive.ALIVE_SUFFIX)]


def _kill_while_holding_claims(proc: DaemonProcess, engine: sa.Engine, worker_prefix: str) -> set[str]:
    """SIGKILL the daemon at a moment it holds claims (stopped first, so the list is exact)."""
    query = sa.text("SELECT content_hash FROM claims WHERE worker LIKE :w").bindparams(w=worker_prefix + "@%")
    for _ in range(200):
        os.killpg(proc.proc.pid, signal.SIGSTOP)
        with engine.connect() as conn:
            held = set(conn.execute(query).scalars())
        if held:
            proc.kill()
            return held
        os.killpg(proc.proc.pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("the daemon never held a claim")


@pytest.mark.postgres
def test_three_workers_one_folder_one_killed(postgres_url: str, tmp_path: Path) -> None:
    """3 daemons on one folder and one PostgreSQL, 3,000 files, one SIGKILLed halfway: every file gets
    exactly one row and one archived copy, the survivors take over its claims, per-station counts add up."""
    total = 3000
    shared = tmp_path / "shared"
    (shared / "incoming").mkdir(parents=True)
    cluster = {"shared_incoming": True, "lease_s": 3.0}
    watch = {"observer": "polling", "poll_interval_s": 0.5, "settle_s": 0.3, "rescan_interval_s": 1.0}
    names = ("s1", "s2", "s3")
    stations = [
        _station(
            tmp_path,
            shared,
            name,
            postgres_url,
            cluster=cluster,
            watch=watch,
            decode={"workers": 1},
            log={"format": "json", "level": "info"},
        )
        for name in names
    ]
    stations[0].cli("db", "upgrade")
    procs = [DaemonProcess(ws) for ws in stations]
    engine = db.make_engine(postgres_url)
    try:
        for proc in procs:
            proc.wait_ready()
        writer = write_burst(shared / "incoming", total, 7)

        def committed() -> int:
            with engine.connect() as conn:
                return int(conn.execute(sa.text("SELECT count(*) FROM results")).scalar_one())

        wait_until(lambda: committed() >= total // 2, 180, "half the rows", interval=0.02)
        held_at_kill = _kill_while_holding_claims(procs[1], engine, "s2")
        assert writer.wait(120) == 0
        wait_until(lambda: committed() >= total, 240, f"{total} rows", interval=0.5)
        wait_until(lambda: not _waiting(shared / "incoming"), 60, "incoming empty")

        rows = stations[0].rows()
        assert len(rows) == total and len({r["content_hash"] for r in rows}) == total
        assert sorted(r["original_name"] for r in rows) == [f"f7-{i:05d}.png" for i in range(total)]
        assert all(r["status"] == "ok" for r in rows)
        archived = [p for p in (shared / "processed").rglob("*.png")]
        assert sorted(p.name for p in archived) == [f"f7-{i:05d}.png" for i in range(total)]
        assert {r["stored_path"] for r in rows} == {str(p) for p in archived}
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM claims")).scalar() == 0
            per_station: dict[str, int] = dict(
                conn.execute(sa.text("SELECT station, count(*) FROM results GROUP BY station")).all()
            )
        assert sum(per_station.values()) == total
        assert per_station["s1"] > 0 and per_station["s3"] > 0 and per_station.get("s2", 0) > 0

        survivors = (procs[0], procs[2])
        taken_over = [e["sha256"] for p in survivors for e in p.events("claim.taken_over")]
        assert taken_over and set(taken_over) <= held_at_kill and len(set(taken_over)) == len(taken_over)
        recorded = Counter(e["sha256"] for p in procs for e in p.events("image.processed"))
        assert recorded and max(recorded.values()) == 1, "an image was recorded twice"
        for proc, name in ((procs[0], "s1"), (procs[2], "s3")):
            body = proc.get("/metrics")[1]
            ok = metric(body, "inspectd_images_processed_total", station=name, status="ok", verdict="absent")
            present = metric(
                body, "inspectd_images_processed_total", station=name, status="ok", verdict="present"
            )
            assert (ok or 0) + (present or 0) == per_station[name]
            assert (metric(body, "inspectd_claims_total", station=name, result="held") or 0) > 0
        for proc in survivors:
            assert proc.stop() == 0
    finally:
        engine.dispose()
        for proc in procs:
            proc.kill()


BUNDLED = read_meta(bundled_model_dir()).version


def _copy_version(models: Path, source: str, version: str) -> None:
    target = models / "versions" / version
    shutil.copytree(models / "versions" / source, target)
    meta = json.loads((target / "metadata.json").read_text())
    meta["version"] = version
    (target / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.postgres
def test_promotions_in_the_database_switch_every_station_unless_pinned(
    postgres_url: str, tmp_path: Path
) -> None:
    shared_models = tmp_path / "models"
    stations = []
    for name, pin in (("a", None), ("b", None), ("c", BUNDLED)):
        ws = Workspace(tmp_path / name, free_port(), postgres_url)
        ws.root.mkdir()
        model: dict[str, Any] = {"num_threads": 1} if pin is None else {"num_threads": 1, "pin": pin}
        ws.write_config(station={"name": name}, paths={"models": str(shared_models)}, model=model)
        stations.append(ws)
    stations[0].cli("db", "upgrade")
    procs = [DaemonProcess(ws) for ws in stations]
    try:
        for proc in procs:
            proc.wait_ready()
        _copy_version(shared_models, BUNDLED, "shared-2")

        def versions() -> list[str | None]:
            out = []
            for proc in procs:
                events = proc.events("model.reloaded")
                out.append(events[-1]["version"] if events else None)
            return out

        stations[0].cli("promote", "shared-2")  # every station that follows the database
        wait_until(lambda: versions()[:2] == ["shared-2", "shared-2"], 15, "a and b to switch")
        assert procs[0].events("model.reloaded")[-1]["source"] == "database"
        stations[1].cli("promote", BUNDLED, "--station", "b")  # b alone goes back
        wait_until(lambda: versions()[1] == BUNDLED, 15, "b to switch back")
        time.sleep(2.5)  # more than one model poll: c is pinned, a stays
        assert versions() == ["shared-2", BUNDLED, None]
        for i, ws in enumerate(stations):
            ws.drop(f"{ws.root.name}.png", png_bytes(70 + i))
        rows = wait_until(lambda: len(stations[0].rows()) == 3 and stations[0].rows(), 30, "3 rows")
        by_station = {r["station"]: r["model_version"] for r in rows}
        assert by_station == {"a": "shared-2", "b": BUNDLED, "c": BUNDLED}
        listing = stations[0].cli("models").stdout
        assert "* shared-2" in listing and "from the database" in listing
        for proc in procs:
            metrics_body = proc.get("/metrics")[1]
            assert metric(metrics_body, "inspectd_model_info", station=proc.ws.root.name) == 1
            assert proc.stop() == 0
    finally:
        for proc in procs:
            proc.kill()
