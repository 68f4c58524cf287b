from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspectd.core.preprocess import preprocess
from inspectd.core.records import Decoded, ReadyFile, Rejected, Vanished
from inspectd.core.tiles import View
from inspectd.daemon.intake.decode import DecodeLimits, decode
from tests.images import encode, png_bomb

LIMITS = DecodeLimits(max_pixels=50_000_000, max_file_bytes=10_000_000)
SIZE = (64, 64)
VIEW = View(SIZE)


def ready(path: Path) -> ReadyFile:
    return ReadyFile(path, 0.0, datetime.now(UTC))


def put(tmp_path: Path, name: str, content: bytes) -> ReadyFile:
    path = tmp_path / name
    path.write_bytes(content)
    return ready(path)


def gradient(dtype: type, channels: int = 1) -> npt.NDArray[Any]:
    top = 255 if dtype is np.uint8 else 65535
    row: npt.NDArray[Any] = np.linspace(0, top, 200).astype(dtype)
    image = np.tile(row, (120, 1))
    return image if channels == 1 else np.dstack([image] * channels)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_formats_decode_to_the_same_tensor(tmp_path: Path, ext: str, channels: int) -> None:
    out = decode(put(tmp_path, "a" + ext, encode(gradient(np.uint8, channels), ext)), LIMITS, VIEW)
    assert isinstance(out, Decoded)
    assert (out.width, out.height) == (200, 120)
    assert out.tiles.shape == (1, 64, 64, 1) and out.tiles[0].dtype == np.float32
    reference = preprocess(gradient(np.uint8), SIZE)
    assert np.abs(out.tiles[0] - reference).max() < (0.03 if ext == ".jpg" else 1e-6)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_sixteen_bit_matches_eight_bit(tmp_path: Path, ext: str) -> None:
    out = decode(put(tmp_path, "deep" + ext, encode(gradient(np.uint16), ext)), LIMITS, VIEW)
    assert isinstance(out, Decoded)
    assert np.abs(out.tiles[0] - preprocess(gradient(np.uint8), SIZE)).max() < 0.01


def test_four_channels_are_accepted(tmp_path: Path) -> None:
    out = decode(put(tmp_path, "rgba.png", encode(gradient(np.uint8, 4), ".png")), LIMITS, VIEW)
    assert isinstance(out, Decoded)


def test_hash_is_of_the_bytes(tmp_path: Path) -> None:
    import hashlib

    content = encode(gradient(np.uint8), ".png")
    out = decode(put(tmp_path, "a.png", content), LIMITS, VIEW)
    assert isinstance(out, Decoded) and out.sha256 == hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.png", b"", "empty_file"),
        ("text.png", b"this is not an image\n" * 10, "decode_failed"),
        ("truncated.png", encode(gradient(np.uint8), ".png")[:200], "decode_failed"),
        (
            "truncated.jpg",
            encode(np.random.default_rng(0).integers(0, 255, (300, 300), np.uint8), ".jpg")[:300],
            "decode_failed",
        ),
        ("tiny.png", encode(np.zeros((1, 1), np.uint8), ".png"), "too_small"),
        ("sliver.png", encode(np.zeros((4000, 10), np.uint8), ".png"), "extreme_aspect_ratio"),
    ],
)
def test_bad_files_are_rejected_with_a_reason(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    out = decode(put(tmp_path, name, content), LIMITS, VIEW)
    assert isinstance(out, Rejected), out
    assert out.reason == reason
    assert out.detail


def test_decompression_bomb_is_refused_before_allocation(tmp_path: Path) -> None:
    # OpenCV reads its pixel limit once per process: check in a fresh one, as the daemon runs.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(60_000, 60_000))
    code = (
        "import sys; from pathlib import Path; from datetime import datetime, UTC\n"
        "from inspectd.daemon.intake.decode import DecodeLimits, decode, install_pixel_limit\n"
        "from inspectd.core.records import ReadyFile\n"
        "install_pixel_limit(1_000_000)\n"
        "item = ReadyFile(Path(sys.argv[1]), 0.0, datetime.now(UTC))\n"
        "from inspectd.core.tiles import View\n"
        "out = decode(item, DecodeLimits(1_000_000, 10**8), View((64, 64)))\n"
        "print(out.reason)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "too_many_pixels"


def test_oversized_file_is_not_read(tmp_path: Path) -> None:
    out = decode(put(tmp_path, "big.png", b"\0" * 2000), DecodeLimits(10**6, 1000), VIEW)
    assert isinstance(out, Rejected) and out.reason == "file_too_large"


def test_symlink_is_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "outside.png"
    secret.write_bytes(encode(gradient(np.uint8), ".png"))
    link = tmp_path / "link.png"
    link.symlink_to(secret)
    out = decode(ready(link), LIMITS, VIEW)
    assert isinstance(out, Rejected) and out.reason == "symlink"


def test_directory_named_like_an_image(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    out = decode(ready(tmp_path / "folder.png"), LIMITS, VIEW)
    assert isinstance(out, Rejected) and out.reason == "not_a_file"


def test_vanished_file(tmp_path: Path) -> None:
    assert isinstance(decode(ready(tmp_path / "gone.png"), LIMITS, VIEW), Vanished)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(tmp_path: Path) -> None:
    item = put(tmp_path, "locked.png", encode(gradient(np.uint8), ".png"))
    item.path.chmod(0)
    out = decode(item, LIMITS, VIEW)
    assert isinstance(out, Rejected) and out.reason == "unreadable"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=4096), st.sampled_from([".png", ".jpg", ".bmp", ".tif"]))
def test_decode_never_raises_on_arbitrary_bytes(tmp_path: Path, content: bytes, ext: str) -> None:
    out = decode(put(tmp_path, "fuzz" + ext, content), LIMITS, VIEW)
    assert isinstance(out, Decoded | Rejected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1), st.integers(1, 3000), st.sampled_from([".png", ".jpg", ".bmp", ".tif"]))
def test_decode_never_raises_on_damaged_images(tmp_path: Path, seed: int, cut: int, ext: str) -> None:
    rng = np.random.default_rng(seed)
    content = bytearray(encode(rng.integers(0, 255, (40, 60), np.uint8), ext))
    for _ in range(3):
        content[int(rng.integers(0, len(content)))] = int(rng.integers(0, 256))
    out = decode(put(tmp_path, "damaged" + ext, bytes(content[: max(1, len(content) - cut)])), LIMITS, VIEW)
    assert isinstance(out, Decoded | Rejected)


def test_one_preprocessing_function_for_daemon_and_training() -> None:
    """The daemon's decode stage and every training data path call the same function; nobody defines
    another one."""
    import ast

    root = Path(__file__).resolve().parent.parent / "inspectd"
    definers, users = [], set()
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and "preprocess" in node.name:
                definers.append(f"{path.name}:{node.name}")
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "inspectd.core.preprocess"
                and any(alias.name == "preprocess" for alias in node.names)
            ):
                users.add(str(path.relative_to(root)))
    assert definers == ["preprocess.py:preprocess"]
    # core/tiles.py: the daemon's decode stage cuts through it
    assert {"core/tiles.py", "train/data/arrays.py"} <= users


@pytest.mark.parametrize(
    ("width", "height", "reason"),
    [
        (640, 512, None),
        (8, 8, None),
        (7, 640, "too_small"),
        (400, 8, None),
        (401, 8, "extreme_aspect_ratio"),
        (1001, 1000, "too_many_pixels"),
    ],
)
def test_shape_problem(width: int, height: int, reason: str | None) -> None:
    from inspectd.daemon.intake.decode import shape_problem

    problem = shape_problem(width, height, DecodeLimits(1_000_000, 1 << 20))
    assert (problem[0] if problem else None) == reason
