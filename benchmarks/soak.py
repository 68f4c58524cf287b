"""Soak: a real daemon, real writer processes of every style, kill -9 on a schedule, exact accounting.

    python benchmarks/soak.py [--minutes 30] [--kill-every 120] [--size 640x512]    (make soak SOAK_ARGS=...)

Not in CI (30 minutes by default). One daemon (``inspectd run``: the default configuration on SQLite,
folders in a temporary directory) is fed for ``--minutes`` by seven writer processes (this script in
``--writer STYLE`` mode), each delivering images its own way:

  cp         ``cp`` from a folder of its own into incoming (open, write, close in place)
  mv         written complete in a sibling folder of incoming, then ``mv`` (a rename in)
  rsync      ``rsync`` into incoming (a hidden ``.name.XXXXXX`` temporary, then a rename)
  slow       written in place in 8 chunks over ~1 s
  pause      opened (created empty), 0.8 s of nothing, then written and closed (FTP/SMB servers do this)
  overwrite  one name, ``snapshot.png``, rewritten in place (open with O_TRUNC, write, close) with a new
             image after the same random gap as the others (the daemon takes a closed file within tens
             of milliseconds, so each version is normally complete, stable and taken before the next),
             but one version in five is followed by the next within 0-0.1 s: written over the old one
             if that is still in incoming, possibly while the daemon reads or moves it
  replace    one name, ``replace.png``: each version written as ``replace.png.tmp`` and renamed over the
             name, with the same timing as overwrite

Every image has distinct bytes (one of a small pool of ``inspectd synth`` PNGs with a unique tEXt chunk,
``benchmarks.run.tagged``); each writer logs the SHA-256 and length of every image once it is delivered.
Every ``--kill-every`` seconds the daemon gets SIGKILL and is started again. At the end the writers are
stopped (SIGTERM: each finishes the image in hand), incoming must drain, the daemon gets SIGTERM, and:

  1. every image written has exactly one row, status ``ok``, whose ``content_hash`` is its SHA-256, and
     whose ``stored_path`` is a file with those bytes. Exception, overwrite/replace only: a version that was
     still in incoming when the next one was written over it (``superseded``: the daemon may never have
     seen it, e.g. it was down) may have no row; if it has one, the same holds for it. The last version
     of each name is never superseded;
  2. no error rows (every image written is valid: an error row is a file taken early, e.g. empty);
  3. no row whose content is no image written (a file read while incomplete or being overwritten);
  4. every row's stored file exists and hashes to the row's hash (no file archived under another row);
  5. nothing left in incoming (hidden names included);
  6. processed/ holds exactly the rows' stored files and their total size is the total size of the images
     recorded (no duplicate copies); quarantine/ is empty;
  7. peak RSS of the daemon (sampled from /proc every 0.5 s, VmHWM included) at most 1 GiB;
  8. every run of the daemon ended by our SIGKILL or, the last, by SIGTERM with exit status 0; every
     writer exited 0.

Rows recorded under another name than the one written (e.g. ``replace.restored-1.png``) are reported as a
note, not a failure: the content hash is the row's identity. Prints PASS/FAIL with the numbers, writes
bench-results/soak.json, exits 1 on FAIL. The work folder (logs, manifests, database) is removed on PASS
and kept on FAIL (or with --keep).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STYLES = ("cp", "mv", "rsync", "slow", "pause", "overwrite", "replace")
FIXED_NAMES = {"overwrite": "snapshot.png", "replace": "replace.png"}
GIB = 1024**3
RACE_SHARE = 0.2  # overwrite, replace: versions followed by the next one within 0.1 s
SHOWN = 12  # examples of each failure printed (all of them go to the JSON, up to 500)


# --- writers (each its own process) ------------------------------------------------------------------


class Writer:
    """One delivery style; runs in its own process until SIGTERM, logging each image once delivered."""

    def __init__(self, style: str, work: Path, seed: int, gap: tuple[float, float]) -> None:
        from benchmarks.run import tagged  # lazy: the parent process needs none of run.py's imports

        self.tagged = tagged
        self.style = style
        self.incoming = work / "var" / "incoming"
        self.own = work / f"writer-{style}"  # beside incoming: same filesystem, never watched
        self.own.mkdir(parents=True, exist_ok=True)
        self.pool = [p.read_bytes() for p in sorted((work / "pool").glob("*.png"))]
        self.rng = random.Random(seed)
        self.gap = gap
        self.stopping = False
        self.previous: str | None = None  # overwrite, replace: the hash of the version last written
        self.manifest = (work / f"manifest-{style}.jsonl").open("a", buffering=1)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def log(self, **record: Any) -> None:
        self.manifest.write(json.dumps({"style": self.style, "at": time.time(), **record}) + "\n")

    def run(self) -> None:
        seq = 0
        while not self.stopping:
            content = self.tagged(
                self.rng.choice(self.pool), f"soak {self.style} {os.getpid()} {seq} {self.rng.random()}"
            )
            name = FIXED_NAMES.get(self.style, f"{self.style}-{os.getpid()}-{seq:06d}.png")
            superseded = self.deliver(name, content)
            if superseded is not None:
                self.log(kind="superseded", sha256=superseded)
            self.log(kind="image", name=name, sha256=hashlib.sha256(content).hexdigest(), bytes=len(content))
            seq += 1
            if self.style in FIXED_NAMES and self.rng.random() < RACE_SHARE:
                self.sleep(self.rng.uniform(0.0, 0.1))  # a camera that does not wait: races the daemon
            else:
                self.sleep(self.rng.uniform(*self.gap))
        self.manifest.close()

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def deliver(self, name: str, content: bytes) -> str | None:
        """Put ``content`` into incoming as ``name``; the hash of the version it replaced while that was
        still in incoming (overwrite, replace), else None."""
        target = self.incoming / name
        if self.style == "cp":
            src = self.own / name
            src.write_bytes(content)
            subprocess.run(["cp", str(src), str(target)], check=True)
            src.unlink()
        elif self.style == "mv":
            src = self.own / name
            with src.open("wb") as fh:
                fh.write(content)
                os.fsync(fh.fileno())
            subprocess.run(["mv", str(src), str(target)], check=True)
        elif self.style == "rsync":
            src = self.own / name
            src.write_bytes(content)
            subprocess.run(["rsync", str(src), str(target)], check=True)
            src.unlink()
        elif self.style == "slow":
            with target.open("wb") as fh:
                step = len(content) // 8 + 1
                for i in range(0, len(content), step):
                    fh.write(content[i : i + step])
                    fh.flush()
                    time.sleep(1.0 / 8)
        elif self.style == "pause":
            with target.open("wb") as fh:
                fh.flush()
                time.sleep(0.8)
                fh.write(content)
        elif self.style in FIXED_NAMES:
            replaced = self.previous if os.path.lexists(target) else None
            if self.style == "overwrite":
                with target.open("wb") as fh:  # O_TRUNC: the same inode, if the old one is still there
                    fh.write(content)
            else:
                tmp = self.incoming / f"{name}.tmp"  # *.tmp: ignored by the daemon
                tmp.write_bytes(content)
                tmp.rename(target)
            self.previous = hashlib.sha256(content).hexdigest()
            return replaced
        else:
            raise ValueError(self.style)
        return None


# --- the daemon ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DaemonRuns:
    """``inspectd run`` started, SIGKILLed and restarted on one work folder; peak RSS sampled from /proc."""

    work: Path
    port: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    peak_rss_kib: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def config(self) -> Path:
        return self.work / "config.toml"

    def cli(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "inspectd", "--config", str(self.config), *args]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)

    def start(self) -> float:
        """Seconds to ready; RuntimeError if it exits or is not ready within 120 s."""
        from benchmarks.run import wait_ready

        log = self.work / f"daemon-{len(self.runs) + 1:02d}.log"
        started = time.monotonic()
        with log.open("w") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "inspectd", "--config", str(self.config), "run"],
                stdout=subprocess.DEVNULL,
                stderr=fh,
                start_new_session=True,
            )
        with self._lock:
            self.proc = proc
        self.runs.append({"pid": proc.pid, "log": log.name, "peak_rss_mib": 0.0})
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited {proc.returncode} while starting; see {log}")
            try:
                wait_ready(self.port, timeout=1.0)
                break
            except RuntimeError:
                if time.monotonic() - started > 120:
                    raise RuntimeError(f"the daemon is not ready after 120 s; see {log}") from None
        ready_s = time.monotonic() - started
        self.runs[-1]["ready_s"] = round(ready_s, 2)
        return ready_s

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def end(self, how: signal.Signals, timeout: float) -> int | None:
        """Send ``how``, wait; the exit status (negative: the signal), None if it would not stop."""
        assert self.proc is not None
        self.sample()
        if self.proc.poll() is None:
            self.proc.send_signal(how)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            code = None
        self.runs[-1].update(ended_by=how.name, exit_status=code)
        with self._lock:
            self.proc = None
        return code

    def sample(self) -> None:
        with self._lock:
            proc = self.proc
            if proc is None:
                return
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                return
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if "VmRSS" not in fields:  # a zombie
            return
        rss, hwm = (int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM"))
        self.peak_rss_kib = max(self.peak_rss_kib, hwm, rss)
        run = self.runs[-1]
        run["peak_rss_mib"] = round(max(run["peak_rss_mib"], hwm / 1024, rss / 1024), 1)
        if not self.rss_samples or time.time() - self.rss_samples[-1][0] >= 10:
            self.rss_samples.append((time.time(), rss))


def sampler(daemon: DaemonRuns, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        daemon.sample()


# --- checks ----------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def entries(folder: Path) -> list[Path]:
    """Every regular file, link or special file below ``folder`` (hidden names too)."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())


@dataclass
class Check:
    name: str
    ok: bool
    summary: str
    details: list[Any] = field(default_factory=list)


def read_manifests(work: Path) -> tuple[dict[str, dict[str, Any]], set[str]]:
    images: dict[str, dict[str, Any]] = {}
    superseded: set[str] = set()
    for path in sorted(work.glob("manifest-*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["kind"] == "image":
                assert record["sha256"] not in images, f"two images with one hash: {record}"
                images[record["sha256"]] = record
            else:
                superseded.add(record["sha256"])
    return images, superseded


def check(work: Path, daemon: DaemonRuns, writer_codes: dict[str, int | None]) -> dict[str, Any]:
    import sqlalchemy as sa

    images, superseded = read_manifests(work)
    engine = sa.create_engine(f"sqlite:///{work / 'var' / 'inspectd.db'}")
    with engine.connect() as conn:
        rows = [
            dict(r._mapping)
            for r in conn.execute(
                sa.text(
                    "SELECT id, content_hash, original_name, stored_path, size_bytes, status, error_reason"
                    " FROM results ORDER BY id"
                )
            )
        ]
    engine.dispose()
    by_hash: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in rows:
        by_hash[row["content_hash"]].append(row)

    # where each content is on disk: every row's stored file, and what quarantine and processed hold
    processed = set(entries(work / "var" / "processed"))
    quarantined = [p for p in entries(work / "var" / "quarantine") if not p.name.endswith(".reason.json")]
    located: dict[str, list[str]] = collections.defaultdict(list)
    stored_hash: dict[int, str | None] = {}
    for row in rows:
        path = Path(row["stored_path"])
        actual = sha256_file(path) if path.is_file() and not path.is_symlink() else None
        stored_hash[row["id"]] = actual
        if actual is not None:
            located[actual].append(f"row {row['id']}: {_rel(path, work)}")
    stored_ok = {Path(r["stored_path"]) for r in rows if r["status"] == "ok"}
    stored_any = {Path(r["stored_path"]) for r in rows}
    for path in [*quarantined, *(processed - stored_any)]:
        if path.is_file() and not path.is_symlink():
            located[sha256_file(path)].append(_rel(path, work))

    bad_stored = [
        {
            **_brief(row),
            "stored_sha256": stored_hash[row["id"]],
            "stored_is": _which(stored_hash[row["id"]], images, "no file"),
        }
        for row in rows
        if stored_hash[row["id"]] != row["content_hash"]
    ]
    missing: list[dict[str, Any]] = []  # images without a row
    allowed_missing: list[dict[str, Any]] = []  # superseded ones without a row
    not_ok: list[dict[str, Any]] = []
    duplicated: list[dict[str, Any]] = []
    renamed: list[dict[str, Any]] = []
    for sha, image in images.items():
        found = by_hash.get(sha, [])
        if not found:
            record = {**image, "its_bytes_are_at": located.get(sha, [])}
            (allowed_missing if sha in superseded else missing).append(record)
            continue
        if len(found) > 1:
            duplicated.append({"image": image, "rows": [_brief(r) for r in found]})
        row = found[0]
        if row["status"] != "ok":
            not_ok.append({"image": image, "row": _brief(row)})
        if row["original_name"] != image["name"]:
            renamed.append({"written": image["name"], "recorded": row["original_name"], "id": row["id"]})
    unknown = [_brief(r) for r in rows if r["content_hash"] not in images]
    errors = [_brief(r) for r in rows if r["status"] != "ok"]
    left = [_rel(p, work) for p in entries(work / "var" / "incoming")]
    extra = sorted(_rel(p, work) for p in processed - stored_ok)
    quarantine_notes = [_quarantined(p, work) for p in quarantined]
    disk = sum(p.lstat().st_size for p in processed)
    recorded_bytes = sum(images[sha]["bytes"] for sha in images if sha in by_hash)
    peak_mib = daemon.peak_rss_kib / 1024

    unclean_runs = [
        r
        for i, r in enumerate(daemon.runs)
        if not (
            (
                r.get("ended_by") == "SIGKILL"
                and r.get("exit_status") == -signal.SIGKILL
                and i < len(daemon.runs) - 1
            )
            or (r.get("ended_by") == "SIGTERM" and r.get("exit_status") == 0 and i == len(daemon.runs) - 1)
        )
    ]
    bad_writers = {k: v for k, v in writer_codes.items() if v != 0}

    by_style = collections.Counter(i["style"] for i in images.values())
    table: dict[str, collections.Counter[str]] = {s: collections.Counter() for s in STYLES}

    def style_of(row: dict[str, Any]) -> str:
        image = images.get(row["content_hash"])
        if image is not None:
            return str(image["style"])
        for style, name in FIXED_NAMES.items():
            if row["original_name"].startswith(name.rsplit(".", 1)[0]):
                return style
        return str(row["original_name"].split("-", 1)[0])

    for image in images.values():
        table[image["style"]]["written"] += 1
        if image["sha256"] in superseded:
            table[image["style"]]["superseded"] += 1
    for row in rows:
        counts = table.setdefault(style_of(row), collections.Counter())
        intact = stored_hash[row["id"]] == row["content_hash"]
        if row["content_hash"] in images and row["status"] == "ok" and intact:
            counts["recorded"] += 1
        if row["status"] != "ok":
            counts["error rows"] += 1
        if not intact:
            counts["rows, other bytes stored"] += 1
        if row["content_hash"] not in images:
            counts["rows, content never written"] += 1
    for record in missing:
        table[record["style"]]["missing"] += 1
    for record in allowed_missing:
        table[record["style"]]["superseded, no row"] += 1
    checks = [
        Check(
            "every image written has one ok row with its hash",
            not missing and not not_ok and not duplicated,
            f"{len(images) - len(missing) - len(allowed_missing)} of {len(images)} recorded; "
            f"missing {len(missing)} ({_styles(missing)}), not ok {len(not_ok)}, "
            f"more than one row {len(duplicated)}; superseded, unrecorded (allowed) {len(allowed_missing)}",
            [*missing, *not_ok, *duplicated],
        ),
        Check("no error rows", not errors, f"{len(errors)} error rows ({_reasons(errors)})", errors),
        Check(
            "no row for content that was never written",
            not unknown,
            f"{len(unknown)} rows ({_reasons(unknown)})",
            unknown,
        ),
        Check(
            "every row's stored file has the row's bytes",
            not bad_stored,
            f"{len(bad_stored)} of {len(rows)} rows differ",
            bad_stored,
        ),
        Check("nothing left in incoming", not left, f"{len(left)} entries left", left),
        Check(
            "processed holds each recorded image once, quarantine empty",
            not extra and not quarantined and disk == recorded_bytes,
            f"processed {len(processed)} files {disk / 2**20:.1f} MiB, recorded images "
            f"{recorded_bytes / 2**20:.1f} MiB ({disk - recorded_bytes:+d} bytes); files no row names "
            f"{len(extra)}; quarantine {len(quarantined)} files",
            [*({"no row names it": p} for p in extra), *quarantine_notes],
        ),
        Check("peak RSS at most 1 GiB", peak_mib <= 1024, f"peak RSS {peak_mib:.0f} MiB"),
        Check(
            "daemon runs ended as intended, writers exited 0",
            not unclean_runs and not bad_writers,
            f"{len(daemon.runs)} runs, unexpected ends {len(unclean_runs)}, writers failed {bad_writers}",
            [*unclean_runs, *({"writer": k, "exit_status": v} for k, v in bad_writers.items())],
        ),
    ]
    return {
        "images_written": len(images),
        "images_by_style": dict(sorted(by_style.items())),
        "by_style": {s: dict(c) for s, c in table.items()},
        "bytes_written": sum(i["bytes"] for i in images.values()),
        "superseded": len(superseded),
        "rows": len(rows),
        "rows_ok": sum(1 for r in rows if r["status"] == "ok"),
        "peak_rss_mib": round(peak_mib, 1),
        "recorded_under_another_name": renamed[:500],
        "checks": [
            {"name": c.name, "ok": c.ok, "summary": c.summary, "details": c.details[:500]} for c in checks
        ],
    }


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: row[k] for k in ("id", "original_name", "status", "error_reason", "content_hash", "size_bytes")
    }


def _compact(value: Any) -> Any:
    """For the printout: hashes cut to 12 characters, the manifest's bookkeeping left out."""
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items() if k not in ("at", "kind")}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return value


def _rel(path: Path, work: Path) -> str:
    return str(path.relative_to(work / "var")) if path.is_relative_to(work / "var") else str(path)


def _quarantined(path: Path, work: Path) -> dict[str, Any]:
    note = path.with_name(path.name + ".reason.json")
    try:
        reason = json.loads(note.read_text()).get("reason")
    except (OSError, ValueError):
        reason = None
    return {"quarantined": _rel(path, work), "reason": reason}


def _which(sha: str | None, images: dict[str, dict[str, Any]], none: str) -> str:
    if sha is None:
        return none
    image = images.get(sha)
    return f"{image['style']} {image['name']}" if image else "content never written"


def _styles(records: list[dict[str, Any]]) -> str:
    counts = collections.Counter(r["style"] for r in records)
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def _reasons(rows: list[dict[str, Any]]) -> str:
    counts = collections.Counter(
        f"{r['original_name'].split('-')[0]}: {r['error_reason'] or r['status']}" for r in rows
    )
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) or "-"


# --- the run ---------------------------------------------------------------------------------------


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    port = args.port or free_port()
    (work / "config.toml").write_text(f'[http]\nlisten = "127.0.0.1:{port}"\n[log]\nformat = "json"\n')
    daemon = DaemonRuns(work, port)
    daemon.cli("db", "upgrade")
    width, height = args.size.split("x")
    daemon.cli("synth", str(work / "pool"), "--count", str(args.pool), "--size", args.size, "--flat")
    print(f"work folder {work}; daemon on port {port}; pool of {args.pool} {width}x{height} PNGs", flush=True)

    stop_sampling = threading.Event()
    thread = threading.Thread(target=sampler, args=(daemon, stop_sampling), daemon=True)
    writers: dict[str, subprocess.Popen[bytes]] = {}
    writer_codes: dict[str, int | None] = {}
    started = time.monotonic()
    kills = 0
    try:
        print(f"daemon ready in {daemon.start():.1f} s", flush=True)
        thread.start()
        for i, style in enumerate(STYLES):
            err = (work / f"writer-{style}.err").open("w")
            writers[style] = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--writer",
                    style,
                    "--work",
                    str(work),
                    "--seed",
                    str(args.seed * 100 + i),
                    "--gap",
                    str(args.gap[0]),
                    str(args.gap[1]),
                ],
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
            err.close()
        end = started + args.minutes * 60
        next_kill = started + args.kill_every
        while time.monotonic() < end:
            time.sleep(min(0.5, max(0.0, min(end, next_kill) - time.monotonic())))
            for style, proc in writers.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"writer {style} exited {proc.returncode}; see {work}/writer-{style}.err"
                    )
            if not daemon.alive():
                daemon.runs[-1].update(
                    ended_by="itself", exit_status=daemon.proc.returncode if daemon.proc else None
                )
                print(
                    f"the daemon exited by itself ({daemon.runs[-1]['exit_status']}): restarting", flush=True
                )
                daemon.proc = None
                daemon.start()
            if time.monotonic() >= next_kill and time.monotonic() < end:
                daemon.end(signal.SIGKILL, 10)
                kills += 1
                ready = daemon.start()
                images, _ = read_manifests(work)
                print(
                    f"{(time.monotonic() - started) / 60:5.1f} min: kill -9 #{kills}, ready again in "
                    f"{ready:.1f} s; {len(images)} images written; "
                    f"peak RSS {daemon.peak_rss_kib / 1024:.0f} MiB",
                    flush=True,
                )
                next_kill += args.kill_every
    except BaseException:
        if daemon.alive():
            daemon.end(signal.SIGKILL, 10)
        raise
    finally:
        stop_sampling.set()
        for proc in writers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for style, proc in writers.items():
            try:
                writer_codes[style] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                writer_codes[style] = proc.wait(10)
    print(
        f"writers stopped after {(time.monotonic() - started) / 60:.1f} min; waiting for incoming to drain",
        flush=True,
    )
    incoming = work / "var" / "incoming"
    drain_started = time.monotonic()
    while entries(incoming) and time.monotonic() - drain_started < args.drain_timeout:
        if not daemon.alive():
            break
        time.sleep(0.2)
    drained_s = time.monotonic() - drain_started
    time.sleep(1.0)  # the last batch's commit and move
    daemon.end(signal.SIGTERM, 60)
    thread.join(5)
    result = check(work, daemon, writer_codes)
    result.update(
        minutes=args.minutes,
        kill_every_s=args.kill_every,
        kills=kills,
        size=args.size,
        drain_s=round(drained_s, 1),
        daemon_runs=daemon.runs,
        rss_mib_every_10s=[round(kib / 1024, 1) for _, kib in daemon.rss_samples],
    )
    return result


def report(result: dict[str, Any]) -> bool:
    passed = all(c["ok"] for c in result["checks"])
    styles = ", ".join(f"{k} {v}" for k, v in result["images_by_style"].items())
    print()
    print(
        f"soak: {result['minutes']} min, kill -9 every {result['kill_every_s']} s ({result['kills']} kills, "
        f"{len(result['daemon_runs'])} daemon runs), {result['size']} PNGs"
    )
    print(
        f"written: {result['images_written']} images ({styles}), {result['bytes_written'] / 2**20:.1f} MiB; "
        f"{result['superseded']} superseded while still in incoming"
    )
    print(
        f"rows: {result['rows']} ({result['rows_ok']} ok); drained in {result['drain_s']} s; "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB"
    )
    columns = [
        "written",
        "recorded",
        "missing",
        "superseded",
        "superseded, no row",
        "error rows",
        "rows, content never written",
        "rows, other bytes stored",
    ]
    print("  " + f"{'style':<10}" + "".join(f"{c:>{max(len(c), 8) + 2}}" for c in columns))
    for style, counts in result["by_style"].items():
        print("  " + f"{style:<10}" + "".join(f"{counts.get(c, 0):>{max(len(c), 8) + 2}}" for c in columns))
    for c in result["checks"]:
        print(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']}: {c['summary']}")
        for detail in c["details"][:SHOWN]:
            print(f"          {json.dumps(_compact(detail), default=str)}")
        if len(c["details"]) > SHOWN:
            print(f"          ... {len(c['details']) - SHOWN} more in the JSON")
    if result["recorded_under_another_name"]:
        renamed = result["recorded_under_another_name"]
        print(f"  note: {len(renamed)} images recorded under another name, e.g. {renamed[:3]}")
    print(f"RESULT: {'PASS' if passed else 'FAIL'}")
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--kill-every", type=float, default=120.0, help="seconds between kill -9s")
    parser.add_argument("--size", default="640x512", help="WIDTHxHEIGHT of the generated PNGs")
    parser.add_argument("--pool", type=int, default=32, help="generated PNGs, each image one of them, tagged")
    parser.add_argument(
        "--gap",
        type=float,
        nargs=2,
        default=(0.3, 1.5),
        metavar=("MIN", "MAX"),
        help="seconds each writer waits between images (random in the range)",
    )
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds for incoming to empty")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=0, help="default: a free one")
    parser.add_argument("--keep", action="store_true", help="keep the work folder even on PASS")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "soak.json")
    parser.add_argument("--writer", choices=STYLES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        Writer(args.writer, args.work, args.seed, (args.gap[0], args.gap[1])).run()
        return
    work = Path(tempfile.mkdtemp(prefix="inspectd-soak-"))
    try:
        result = soak(args, work)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:  # a daemon that would not start
        print(f"RESULT: FAIL (aborted: {exc}); work folder kept: {work}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"passed": False, "aborted": str(exc), "work": str(work)}) + "\n")
        sys.exit(1)
    passed = report(result)
    keep = args.keep or not passed
    result.update(passed=passed, work=str(work) if keep else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"results: {args.out}")
    if keep:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
