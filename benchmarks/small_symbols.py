"""Small symbols on large frames: whole-frame resizing against tiled inference, same network, same frames.

    python benchmarks/small_symbols.py [--frames N]        (make bench-small)

Held-out generated 1280x1024 frames, about half with a registration mark of 24-55 px at a random place.
The bundled network was trained on 640x512 frames shrunk to 128 px (a 5x reduction). Whole-frame mode
shrinks 1280x1024 to 128 px (10x): the mark becomes 2-5 px and is mostly erased. Tiled mode cuts the frame
into tiles that are shrunk to the network's input, each an inference of the same batched call:
  tile 320 px, overlap 0.5 (2.5x: the mark 10-22 px, the scale the network was trained at), 42 tiles;
  tile 256 px, overlap 0.5 (2x), 63 tiles.
For each mode: per-frame ROC-AUC, F1 at the version's threshold, how often the stored box (the best tile)
holds the true mark (over the frames found present), and the cost in images/s on one core, measured in the
same run through the daemon's own decode stage and LiteRT. Writes bench-results/small_symbols.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspectd.core.records import Decoded, ReadyFile
from inspectd.core.registry import bundled_model_dir
from inspectd.core.tiles import View, overlap_ratio
from inspectd.daemon.intake.decode import DecodeLimits, decode
from inspectd.model.runtime import Inferencer
from inspectd.ops.synth import SynthSpec, generate
from inspectd.train.evaluate.metrics import binary_metrics

ROOT = Path(__file__).resolve().parent.parent
SPEC = SynthSpec(width=1280, height=1024, mark_min=24, mark_max=55)
MODES = {
    "whole frame (resize to 128)": None,
    "tiles 320 px, overlap 0.5": (320, 0.5),
    "tiles 256 px, overlap 0.5": (256, 0.5),
}


def _make(args: tuple[int, Path]) -> tuple[str, int, list[int] | None]:
    index, folder = args
    sample = generate(np.random.default_rng(50_000 + index), SPEC)
    path = folder / f"frame-{index:05d}.png"
    if not path.exists():
        cv2.imwrite(str(path), sample.image)
    return str(path), int(sample.present), list(sample.box) if sample.box else None


def frames(count: int, cache: Path) -> list[tuple[str, int, list[int] | None]]:
    folder = cache / f"small-symbols-1280x1024-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor() as pool:
        return list(pool.map(_make, [(i, folder) for i in range(count)], chunksize=8))


def evaluate(
    inferencer: Inferencer, items: list[tuple[str, int, list[int] | None]], view: View
) -> dict[str, Any]:
    limits = DecodeLimits(64_000_000, 256 * 1024 * 1024)
    scores, labels, hits, tiles = [], [], [], 0
    started = time.perf_counter()
    for path, present, box in items:
        decoded = decode(ReadyFile(Path(path), 0.0, datetime.now(UTC)), limits, view)
        assert isinstance(decoded, Decoded), path
        [scored] = inferencer.classify([decoded])
        tiles = len(decoded.boxes)
        scores.append(scored.score)
        labels.append(present)
        if present and scored.score >= scored.threshold and scored.box is not None and box is not None:
            hits.append(overlap_ratio(scored.box, (box[0], box[1], box[2], box[3])) >= 0.5)
    elapsed = time.perf_counter() - started
    metrics = binary_metrics(np.array(labels), np.array(scores, np.float32), inferencer.meta.threshold)
    return {
        "tiles_per_frame": tiles,
        "roc_auc": metrics.roc_auc,
        "f1": metrics.f1,
        "precision": metrics.precision,
        "recall": metrics.recall,
        "box_hit_rate": float(np.mean(hits)) if hits else None,
        "boxes_checked": len(hits),
        "images_per_s_one_core": len(items) / elapsed,
    }


def compare_cuts(
    inferencer: Inferencer, items: list[tuple[str, int, list[int] | None]], view: View, rounds: int = 3
) -> dict[str, Any]:
    """Tiles cut from one shrink of the frame (the daemon's way) against one shrink per tile (the
    previous way), alternated ``rounds`` times on the same frames: frames/s of each and their ratio."""
    from inspectd.core.tiles import cut
    from inspectd.daemon.intake import decode as stage

    names = vars(stage)  # the decode stage's own name for the cut, swapped for the baseline's rounds
    runs: dict[str, list[dict[str, Any]]] = {"one shrink per tile": [], "one shrink per frame": []}
    try:
        for _ in range(rounds):
            for name in runs:
                names["cut"] = cut if name == "one shrink per frame" else partial(cut, shared=False)
                runs[name].append(evaluate(inferencer, items, view))
    finally:
        names["cut"] = cut
    out: dict[str, Any] = {}
    for name, measured in runs.items():
        rates = [m["images_per_s_one_core"] for m in measured]
        out[name] = {**measured[0], "images_per_s_one_core": statistics.median(rates), "rounds": rates}
    per_tile, per_frame = (out[name]["images_per_s_one_core"] for name in runs)
    out["speedup"] = per_frame / per_tile
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "small_symbols.json")
    args = parser.parse_args()
    items = frames(args.frames, args.out.parent / "cache")
    inferencer = Inferencer.load(bundled_model_dir(), num_threads=1)
    results: dict[str, Any] = {"frames": len(items), "present": sum(p for _, p, _ in items), "modes": {}}
    for name, tiling in MODES.items():
        view = View(inferencer.input_size, None, *(tiling or (None, 0.25)))
        results["modes"][name] = evaluate(inferencer, items, view)
        print(name, json.dumps(results["modes"][name]), flush=True)
    results["cut"] = compare_cuts(inferencer, items, View(inferencer.input_size, None, 320, 0.5))
    print("cut", json.dumps(results["cut"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{results['frames']} held-out 1280x1024 frames, {results['present']} with a 24-55 px mark")
    header = ("mode", "tiles", "ROC-AUC", "F1", "box hits", "images/s")
    print(f"  {header[0]:<30}" + "".join(f"{h:>10}" for h in header[1:]))
    for name, r in results["modes"].items():
        hit = "-" if r["box_hit_rate"] is None else f"{r['box_hit_rate']:.2f}"
        cells = (
            str(r["tiles_per_frame"]),
            f"{r['roc_auc']:.3f}",
            f"{r['f1']:.3f}",
            hit,
            f"{r['images_per_s_one_core']:.1f}",
        )
        print(f"  {name:<30}" + "".join(f"{c:>10}" for c in cells))
    print("(images/s: decode + tiles + inference on one core, in this run)")
    cuts = results["cut"]
    for name in ("one shrink per tile", "one shrink per frame"):
        r = cuts[name]
        rounds = " / ".join(f"{v:.1f}" for v in r["rounds"])
        print(f"  320 px tiles, {name:<22} ROC-AUC {r['roc_auc']:.3f}  F1 {r['f1']:.3f}  {rounds} images/s")
    print(f"  one shrink per frame / per tile: {cuts['speedup']:.2f}x (medians of alternated rounds)")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
