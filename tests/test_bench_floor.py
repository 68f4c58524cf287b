"""make bench's floor (benchmarks/run.py): the CPU per image of the work no daemon can leave out, and the
burst that work alone allows. Real files and the bundled network; no timing is asserted, only that the
parts are measured and the arithmetic that turns them into a bound is right."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.run import floor, workload


def test_floor_adds_up_the_mandatory_work(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    files = []
    for i in range(4):
        path = tmp_path / f"frame-{i}.png"
        assert cv2.imwrite(str(path), rng.integers(0, 256, (240, 320), dtype=np.uint8))
        files.append(path)
    result = {
        "decoder_ceiling_cpu_ms_per_image": [5.0, 4.0, 6.0],  # median 5.0
        "burst_cpu_ms_per_image": [9.0, 8.0, 7.0],  # median 8.0
        "ceiling_runs_images_per_s": [200.0, 190.0, 210.0],
        "decoder_ceiling_runs_images_per_s": [400.0, 380.0, 420.0],
    }
    f = floor(files, result, None, sample=4)
    assert f["decode_resize_cpu_ms"] == 5.0
    assert f["read_sha256_cpu_ms"] >= 0.0
    assert f["inference_cpu_ms"] > 0.0  # the bundled network really ran
    total = 5.0 + f["read_sha256_cpu_ms"] + f["inference_cpu_ms"]
    assert f["cpu_ms_per_image"] == pytest.approx(total)
    assert f["daemon_other_cpu_ms"] == pytest.approx(8.0 - total)
    most = (os.cpu_count() or 1) * 1000 / total
    assert f["max_images_per_s"] == pytest.approx(most)
    assert f["max_over_ceiling"] == pytest.approx(most / 200.0)
    assert f["max_over_decoder_ceiling"] == pytest.approx(most / 400.0)


def test_png_workload_is_written_without_jpeg_parameters(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (png,) = workload(1, tmp_path)
    (jpeg,) = workload(1, tmp_path, "jpeg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert jpeg.read_bytes()[:3] == b"\xff\xd8\xff"
    assert "unsupported key" not in capfd.readouterr().err
