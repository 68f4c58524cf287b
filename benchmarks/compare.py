"""Two daemons, their bursts alternated (make bench-compare):

  python -m benchmarks.compare --against COMMIT   this checkout ("new") against COMMIT ("old")
  python -m benchmarks.compare --mqtt             this checkout publishing to a local mosquitto ("new")
                                                  against the same without [mqtt] ("old")

The same workload as ``make bench`` (generated 1280x1024 PNGs, the default config, SQLite, the bundled
model). The two daemons run side by side, idle but for their turn; COMMIT is checked out with
``git worktree`` under a temporary folder and run with the same Python environment. Their bursts
alternate, new, old, old, new, ..., on the same files (tagged to be distinct bytes each time), so that
the machine's drift between minutes falls on both alike. Reported: each side's median images/s and CPU
ms per image, and new / old per round. Writes bench-results/compare.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.run import ROOT, Daemon, burst, workload


def checkout(commit: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=ROOT, check=True)
    return where


def start_broker(tmp: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """mosquitto on 127.0.0.1:``port`` (on this machine: its work counts against the daemon's), and the
    [mqtt] section that publishes to it."""
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)
    return broker, f'[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--against", help="the commit to compare with (e.g. HEAD~3, a tag)")
    which.add_argument("--mqtt", action="store_true", help="MQTT publishing on against off")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4, help="bursts per side, alternated")
    parser.add_argument("--port", type=int, default=19308)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "compare.json")
    args = parser.parse_args()
    files = workload(args.images, ROOT / "bench-results" / "cache")
    with tempfile.TemporaryDirectory(prefix="inspectd-compare-") as tmp_name:
        tmp = Path(tmp_name)
        broker: subprocess.Popen[bytes] | None = None
        if args.mqtt:
            commit, old_source = "mqtt off", ROOT
            broker, new_extra = start_broker(tmp, args.port + 2)
        else:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", args.against],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            old_source, new_extra = checkout(commit, tmp / "old-source"), ""
        try:
            sides = {}
            for n, (name, source, extra) in enumerate((("new", ROOT, new_extra), ("old", old_source, ""))):
                (tmp / name).mkdir()
                sides[name] = Daemon(tmp / name, args.port + n, source=source, extra=extra)
            runs: dict[str, list[tuple[float, float]]] = {"new": [], "old": []}
            try:
                for r in range(args.rounds):
                    for name in ("new", "old") if r % 2 == 0 else ("old", "new"):
                        run = burst(sides[name], files, f"{name}{r}")
                        runs[name].append((run.images_per_s, run.cpu_ms_per_image))
                        print(
                            f"round {r + 1} {name}: {run.images_per_s:.1f} images/s, "
                            f"{run.cpu_ms_per_image:.2f} ms CPU per image",
                            flush=True,
                        )
            finally:
                for daemon in sides.values():
                    daemon.stop()
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait(10)
            else:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(old_source)], cwd=ROOT, check=False
                )
                shutil.rmtree(old_source, ignore_errors=True)
    rate = {k: statistics.median(v[0] for v in runs[k]) for k in runs}
    cpu = {k: statistics.median(v[1] for v in runs[k]) for k in runs}
    pairs = [n[0] / o[0] for n, o in zip(runs["new"], runs["old"], strict=True)]
    result = {
        "against": commit,
        "images": len(files),
        "runs": runs,
        "images_per_s": rate,
        "cpu_ms_per_image": cpu,
        "throughput_ratio_new_over_old": rate["new"] / rate["old"],
        "cpu_ratio_new_over_old": cpu["new"] / cpu["old"],
        "round_ratios": pairs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"new / old ({commit}): throughput {result['throughput_ratio_new_over_old']:.3f} "
        f"(rounds {' / '.join(f'{p:.3f}' for p in pairs)}), "
        f"CPU per image {result['cpu_ratio_new_over_old']:.3f}"
    )


if __name__ == "__main__":
    main()
