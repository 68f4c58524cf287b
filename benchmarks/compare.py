"""No regression against an older commit: python -m benchmarks.compare --against COMMIT  (make bench-compare)

The same workload as ``make bench`` (generated 1280x1024 PNGs, the default config, SQLite, the bundled
model). Two daemons run side by side, idle but for their turn: this checkout's and COMMIT's (checked
out with ``git worktree`` under a temporary folder, run with the same Python environment). Their bursts
alternate, new, old, new, old, ..., on the same files (tagged to be distinct bytes each time), so that
the machine's drift between minutes falls on both alike. Reported: each side's median images/s and CPU
ms per image, and new / old per adjacent pair of bursts. Writes bench-results/compare.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks.run import ROOT, Daemon, burst, workload


def checkout(commit: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=ROOT, check=True)
    return where


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--against", required=True, help="the commit to compare with (e.g. HEAD~3, a tag)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4, help="bursts per side, alternated")
    parser.add_argument("--port", type=int, default=19308)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "compare.json")
    args = parser.parse_args()
    files = workload(args.images, ROOT / "bench-results" / "cache")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", args.against], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="inspectd-compare-") as tmp_name:
        tmp = Path(tmp_name)
        old_source = checkout(commit, tmp / "old-source")
        try:
            sides = {}
            for n, (name, source) in enumerate((("new", ROOT), ("old", old_source))):
                (tmp / name).mkdir()
                sides[name] = Daemon(tmp / name, args.port + n, source=source)
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
            subprocess.run(["git", "worktree", "remove", "--force", str(old_source)], cwd=ROOT, check=False)
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
