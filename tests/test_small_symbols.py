"""Small symbols on large frames: region of interest, tiles, the stored box, explain, tiled training."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.core.preprocess import preprocess
from inspectd.core.records import Decoded, ReadyFile
from inspectd.core.tiles import View, cut, grid, overlap_ratio, region
from inspectd.daemon.intake.decode import DecodeLimits, decode
from inspectd.ops.synth import SynthSpec, generate
from tests.conftest import DaemonProcess, Workspace

Start = Callable[..., DaemonProcess]
LARGE = SynthSpec(width=1280, height=1024, mark_min=24, mark_max=55)
LIMITS = DecodeLimits(64_000_000, 10**9)


@pytest.mark.parametrize(("w", "h", "tile", "overlap"), [(1280, 1024, 320, 0.5), (1000, 700, 256, 0.25)])
def test_tiles_cover_every_pixel_and_end_on_the_edges(w: int, h: int, tile: int, overlap: float) -> None:
    covered = np.zeros((h, w), np.int32)
    boxes = grid((0, 0, w, h), tile, overlap)
    for x, y, bw, bh in boxes:
        assert (bw, bh) == (tile, tile) and x + bw <= w and y + bh <= h
        covered[y : y + bh, x : x + bw] += 1
    assert covered.min() >= 1
    assert max(x + bw for x, _, bw, _ in boxes) == w and max(y + bh for _, y, _, bh in boxes) == h
    assert grid((10, 20, 100, 50), 320, 0.5) == [(10, 20, 100, 50)]  # a region smaller than a tile


def test_tiles_come_from_one_shrink_of_the_frame_and_match_one_shrink_per_tile() -> None:
    """Tiles that must be shrunk are slices of the frame shrunk once: where every tile's origin falls on
    the shrunk grid (960 rows at 2.5x) they are bit for bit the per-tile shrink; else (1024 rows: 409.6
    shrunk rows) within a fraction of a pixel's shift of it."""
    for height, tolerance in ((960, 0.0), (1024, 0.02)):  # measured: 0.0 and 0.008 (pixels in 0..1)
        image = generate(np.random.default_rng(4), SynthSpec(width=1280, height=height)).image
        boxes = grid((0, 0, 1280, height), 320, 0.5)
        tiles = cut(image, boxes, (128, 128))
        each = np.stack([preprocess(image[y : y + h, x : x + w], (128, 128)) for x, y, w, h in boxes])
        assert tiles.shape == each.shape == (len(boxes), 128, 128, 1)
        worst = np.abs(tiles - each).mean(axis=(1, 2, 3)).max()
        assert worst <= tolerance, (height, worst)
    # tiles at the input's own size, or one tile: cut as they are
    image = generate(np.random.default_rng(5), SynthSpec(width=400, height=300)).image
    boxes = grid((0, 0, 400, 300), 128, 0.25)
    native = cut(image, boxes, (128, 128))
    assert all(
        np.array_equal(native[i], preprocess(image[y : y + h, x : x + w], (128, 128)))
        for i, (x, y, w, h) in enumerate(boxes)
    )


def test_region_in_pixels_or_fractions() -> None:
    assert region(None, 640, 480) == (0, 0, 640, 480)
    assert region((0.25, 0.5, 0.5, 0.5), 640, 480) == (160, 240, 320, 240)
    assert region((600, 400, 100, 100), 640, 480) == (600, 400, 40, 80)  # clipped to the frame
    with pytest.raises(ValueError, match="outside"):
        region((700, 0, 10, 10), 640, 480)


def _write(path: Path, image: np.ndarray) -> ReadyFile:
    assert cv2.imwrite(str(path), image)
    return ReadyFile(path, 0.0, datetime.now(UTC))


def test_roi_only_the_region_reaches_the_model(tmp_path: Path) -> None:
    sample = generate(np.random.default_rng(3), LARGE, present=True)
    roi = (200.0, 100.0, 512.0, 384.0)
    view = View((128, 128), roi)
    first = decode(_write(tmp_path / "a.png", sample.image), LIMITS, view)
    assert isinstance(first, Decoded) and first.boxes == ((200, 100, 512, 384),)
    expected = preprocess(sample.image[100:484, 200:712], (128, 128))
    assert np.array_equal(first.tiles[0], expected)
    changed = sample.image.copy()
    changed[:100, :] = 255  # everything outside the region differs
    changed[:, 712:] = 0
    second = decode(_write(tmp_path / "b.png", changed), LIMITS, view)
    assert isinstance(second, Decoded) and np.array_equal(first.tiles, second.tiles)


def test_tiled_daemon_stores_where_the_mark_is(daemon: Start, upgraded: Workspace) -> None:
    """The bundled network on 320 px tiles of 1280x1024 frames: the stored box is the best tile, and it
    holds the true mark; `inspectd results` shows it; `inspectd explain` draws it."""
    upgraded.write_config(model={"num_threads": 1, "tile": 320, "tile_overlap": 0.5})
    proc = daemon()
    truth: dict[str, tuple[bool, tuple[int, int, int, int] | None]] = {}
    rng = np.random.default_rng(11)
    for i in range(8):
        sample = generate(rng, LARGE, present=i < 5)
        ok, buf = cv2.imencode(".png", sample.image)
        assert ok
        upgraded.drop(f"big-{i}.png", buf.tobytes())
        truth[f"big-{i}.png"] = (sample.present, sample.box)
    rows = proc.wait_rows(8, timeout=60)
    found = [r for r in rows if r["verdict"] == "present"]
    hits = 0
    for row in rows:
        present, box = truth[str(row["original_name"])]
        assert row["status"] == "ok" and row["box_w"] == 320 and row["box_h"] == 320  # the best tile
        if row["verdict"] == "present" and present and box is not None:
            tile = (row["box_x"], row["box_y"], row["box_w"], row["box_h"])
            hits += overlap_ratio(tile, box) >= 0.5
    assert len(found) >= 4 and hits >= len([r for r in found if truth[str(r["original_name"])][0]]) - 1
    table = upgraded.cli("results").stdout
    assert "box" in table.splitlines()[0] and " 320x320" in table
    row = next(r for r in rows if r["verdict"] == "present")
    out = upgraded.root / "explain.png"
    said = upgraded.cli("explain", str(row["stored_path"]), "--out", str(out)).stdout
    assert "present" in said and "42 tiles" in said and str(out) in said
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[1] == 1280
    red = (picture[..., 2] > 200) & (picture[..., 1] < 60) & (picture[..., 0] < 60)
    assert red.sum() > 500, "the box is drawn"
    queue = upgraded.cli("review", "--limit", "2", "--confident", "0", "--explain", str(upgraded.root / "q"))
    pictures = sorted((upgraded.root / "q").glob("*.explain.png"))
    assert len(pictures) == 2 and all(str(p) in queue.stdout for p in pictures)
    assert proc.stop() == 0


def test_bad_roi_names_the_key(ws: Workspace) -> None:
    ws.write_config(model={"roi": [0.5, 0.5, 0.7, 0.2]})
    result = ws.cli("check-config", check=False)
    assert result.returncode == 78 and "model.roi" in result.stderr


@pytest.mark.slow
@pytest.mark.train
def test_tiled_retrain_from_boxed_labels(upgraded: Workspace, tmp_path: Path) -> None:
    """Labels with boxes (the synth CSV) train a tiled version; unboxed present labels are pseudo-labeled
    by their best tile; the version carries its tiling and is evaluated per frame."""
    quick = {"epochs": 2, "input_size": 64, "min_per_class": 10, "patience": 2, "batch_size": 16}
    tiles = {"tile": 256, "tile_overlap": 0.25, "backbone": "small_cnn", "head": "global"}
    upgraded.write_config(retrain={**quick, **tiles})
    upgraded.cli("synth", str(tmp_path / "data"), "--count", "120", "--seed", "5")
    sheet = tmp_path / "data" / "labels.csv"
    with sheet.open() as fh:
        rows = list(csv.reader(fh))
    for row in rows[1:][::4]:  # a quarter of the present frames lose their box: the MIL path
        if row[1] == "present":
            del row[2:]
    with sheet.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    assert "added 120 examples" in upgraded.cli("label", "--import", str(sheet)).stdout
    result = upgraded.cli("retrain", "--force", timeout=600)
    assert "PROMOTED" in result.stdout
    summary = json.loads(next((upgraded.root / "var" / "runs").glob("retrain-*/summary.json")).read_text())
    meta = json.loads((upgraded.models / "versions" / summary["version"] / "metadata.json").read_text())
    assert meta["tiling"] == {"tile": 256, "overlap": 0.25} and meta["input_size"] == [64, 64]
    report = json.loads(
        next((upgraded.root / "var" / "runs").glob("retrain-*/holdout-candidate/report.json")).read_text()
    )
    assert report["metrics"]["count"] == sum(report["metrics"]["confusion_matrix"].values())
    assert report["metrics"]["count"] < 40  # frames, not tiles
