"""Scale-out benchmark: 1, 2 and 3 daemons on one incoming folder and one PostgreSQL.

    pg_virtualenv -t python -m benchmarks.scaleout [--images N]      (make bench-scaleout)

The same generated 1280x1024 PNGs as benchmarks/run.py (its cache), dropped in one burst into a folder
watched by W daemons with ``[cluster] shared_incoming = true`` (each file claimed through the database by
exactly one of them). Baseline measured in the same run: one daemon on the same PostgreSQL without claims.
Reports images/s from the first file dropped to the last row committed and moved, the ratio to the
baseline, and how the files were spread over the workers; writes bench-results/scaleout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.run import ROOT, stage, wait_ready, workload


def pg_admin_url(database: str) -> str:
    """The cluster pg_virtualenv (or the PG* variables) points at."""
    user = os.environ.get("PGUSER", "postgres")
    password = os.environ.get("PGPASSWORD", "")
    host = os.environ.get("PGHOST", "localhost")
    port = os.environ.get("PGPORT", "5432")
    auth = f"{user}:{password}@" if password else f"{user}@"
    if host.startswith("/"):
        return f"postgresql+psycopg://{auth}/{database}?host={host}&port={port}"
    return f"postgresql+psycopg://{auth}{host}:{port}/{database}"


def fresh_database() -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_admin_url("postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return pg_admin_url(name)


def run(files: list[Path], tmp: Path, workers: int, claims: bool, port: int) -> dict[str, Any]:
    root = tmp / f"w{workers}-{'claims' if claims else 'plain'}"
    shared = root / "shared"
    url = fresh_database()
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    for i in range(workers):
        config = root / f"s{i + 1}.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f'[station]\nname = "s{i + 1}"\n'
            f'[paths]\nincoming = "{shared}/var/incoming"\nprocessed = "{shared}/var/processed"\n'
            f'quarantine = "{shared}/var/quarantine"\nmodels = "{shared}/var/models"\n'
            f'[database]\nurl = "{url}"\n[http]\nlisten = "127.0.0.1:{port + i}"\n'
            f"[cluster]\nshared_incoming = {'true' if claims else 'false'}\n"
            '[log]\nformat = "json"\nlevel = "warning"\n'
        )
        if i == 0:
            subprocess.run(
                [sys.executable, "-m", "inspectd", "--config", str(config), "db", "upgrade"],
                check=True,
                capture_output=True,
            )
            subprocess.run(  # the registry (bundled model) is installed once, before several start
                [sys.executable, "-m", "inspectd", "--config", str(config), "models"],
                check=True,
                capture_output=True,
            )
        log = (root / f"s{i + 1}.log").open("w")
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "inspectd", "--config", str(config), "run"],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        )
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        for i in range(workers):
            wait_ready(port + i, timeout=60)
        burst = stage(files, shared / "staging", "burst")
        started = time.monotonic()
        for staged, target in burst:
            staged.rename(target)
        while True:
            with engine.connect() as conn:
                rows = int(conn.execute(sa.text("SELECT count(*) FROM results")).scalar_one())
            if rows >= len(burst) and not any((shared / "var" / "incoming").iterdir()):
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a worker exited; see {root}")
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        with engine.connect() as conn:
            query = sa.text("SELECT station, count(*) FROM results GROUP BY station")
            spread: dict[str, int] = {str(k): int(v) for k, v in conn.execute(query).all()}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
        for log in logs:
            log.close()
        engine.dispose()
    return {
        "workers": workers,
        "claims": claims,
        "images_per_s": len(files) / elapsed,
        "per_worker": {k: spread[k] for k in sorted(spread)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--port", type=int, default=19308)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "scaleout.json")
    args = parser.parse_args()
    if not os.environ.get("PGHOST") and not os.environ.get("PGPORT"):
        raise SystemExit("no PostgreSQL: run under pg_virtualenv (make bench-scaleout does)")
    files = workload(args.images, args.out.parent / "cache")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="inspectd-scaleout-") as tmp_name:
        tmp = Path(tmp_name)
        for workers, claims in ((1, False), (1, True), (2, True), (3, True)):
            result = run(files, tmp, workers, claims, args.port)
            results.append(result)
            print(f"{json.dumps(result)}", flush=True)
            shutil.rmtree(tmp / f"w{workers}-{'claims' if claims else 'plain'}", ignore_errors=True)
    baseline = results[0]["images_per_s"]
    for r in results:
        r["ratio_to_one_plain_worker"] = r["images_per_s"] / baseline
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"images": len(files), "cores": os.cpu_count(), "runs": results}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{len(files)} images, 1280x1024 PNG, {os.cpu_count()} cores, one PostgreSQL")
    print(f"  {'workers':<28}{'images/s':>10}{'ratio':>8}  files per worker")
    for r in results:
        name = f"{r['workers']} {'(claims)' if r['claims'] else '(no claims: baseline)'}"
        spread = " ".join(f"{k}={v}" for k, v in r["per_worker"].items())
        print(f"  {name:<28}{r['images_per_s']:>10.1f}{r['ratio_to_one_plain_worker']:>8.2f}  {spread}")
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
