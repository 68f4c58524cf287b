from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from inspectd.ops.synth import SynthSpec, generate
from tests.conftest import Workspace


def test_generator_is_deterministic_and_labelled() -> None:
    a = generate(np.random.default_rng(3), SynthSpec(), present=True)
    b = generate(np.random.default_rng(3), SynthSpec(), present=True)
    assert np.array_equal(a.image, b.image)
    assert a.present and a.box is not None
    x, y, w, h = a.box
    assert x >= 0 and y >= 0 and x + w <= 640 + 1 and y + h <= 512 + 1
    absent = generate(np.random.default_rng(3), SynthSpec(), present=False)
    assert not absent.present and absent.box is None
    assert a.image.shape == (512, 640) and a.image.dtype == np.uint8


def test_mark_changes_the_pixels_where_it_is() -> None:
    with_mark = generate(np.random.default_rng(8), SynthSpec(distractors=(0, 0)), present=True)
    assert with_mark.box is not None
    x, y, w, h = with_mark.box
    patch = with_mark.image[max(0, y) : y + h, max(0, x) : x + w].astype(float)
    assert patch.std() > 15  # strong edges of the ring and crosshair


def test_synth_command(ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "set"
    result = ws.cli(
        "synth",
        str(out),
        "--count",
        "6",
        "--seed",
        "4",
        "--size",
        "320x256",
        "--format",
        "jpg",
        "--mark-size",
        "20-40",
    )
    assert "wrote 6 images" in result.stdout
    with (out / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    for row in rows:
        path = out / row["file"]
        assert path.parent.name == row["label"]
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape == (256, 320)
        if row["label"] == "present":
            assert 20 <= int(row["w"]) <= 40
    bad = ws.cli("synth", str(out), "--size", "big", check=False)
    assert bad.returncode == 2 and "WIDTHxHEIGHT" in bad.stderr
