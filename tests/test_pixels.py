"""The decode stage's fast PNG path gives OpenCV's pixels exactly, and leaves every other case to OpenCV
(daemon/intake/pixels.py). A corpus of PNG kinds written by OpenCV and by Pillow (interlaced, palette,
alpha, 16-bit, odd sizes), plus broken files."""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from PIL import Image

from inspectd.daemon.intake.pixels import decode_pixels, fast_png

rng = np.random.default_rng(5)


def cv_png(image: np.ndarray, **params: int) -> bytes:
    flags = [cv2.IMWRITE_PNG_COMPRESSION, params.get("level", 3)]
    ok, buf = cv2.imencode(".png", image, flags)
    assert ok
    return bytes(buf.tobytes())


def pil_png(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **options)
    return out.getvalue()


def adam7_png(image: np.ndarray) -> bytes:
    """A grayscale PNG, interlaced (Adam7), written here: neither OpenCV nor Pillow writes one."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    depth = 16 if image.dtype == np.uint16 else 8
    big = image.astype(">u2") if depth == 16 else image
    raw = b""
    for x0, y0, dx, dy in (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ):
        sub = big[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    h, w = image.shape
    header = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def gray8(h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


def gray16(h: int, w: int) -> np.ndarray:
    return rng.integers(0, 65536, (h, w), dtype=np.uint16)


CORPUS: dict[str, tuple[Callable[[], bytes], bool]] = {  # name: (bytes, takes the fast path)
    "gray 8-bit": (lambda: cv_png(gray8(64, 80)), True),
    "gray 8-bit, odd size": (lambda: cv_png(gray8(33, 7)), True),
    "gray 8-bit, 1x1": (lambda: cv_png(gray8(1, 1)), True),
    "gray 8-bit, best compression": (lambda: cv_png(gray8(50, 50), level=9), True),
    "gray 16-bit": (lambda: cv_png(gray16(40, 30)), True),
    "gray 8-bit, interlaced": (lambda: adam7_png(gray8(45, 61)), True),
    "gray 16-bit, interlaced": (lambda: adam7_png(gray16(21, 19)), True),
    "gray 16-bit (Pillow)": (lambda: pil_png(Image.fromarray(gray16(21, 19))), True),
    "gray with tRNS (Pillow)": (lambda: pil_png(Image.fromarray(gray8(20, 20)), transparency=7), False),
    "gray 1-bit (Pillow)": (lambda: pil_png(Image.fromarray(gray8(16, 16) > 127)), False),
    "colour 8-bit": (lambda: cv_png(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)), False),
    "colour 16-bit": (lambda: cv_png(rng.integers(0, 65536, (30, 40, 3), dtype=np.uint16)), False),
    "colour with alpha": (lambda: cv_png(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)), False),
    "gray with alpha (Pillow)": (
        lambda: pil_png(Image.fromarray(rng.integers(0, 256, (20, 20, 2), dtype=np.uint8), "LA")),
        False,
    ),
    "palette (Pillow)": (lambda: pil_png(Image.fromarray(gray8(24, 24)).convert("P")), False),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_the_same_pixels_as_opencv(name: str) -> None:
    make, fast = CORPUS[name]
    content = make()
    assert fast_png(content, 10**8) is fast
    expected = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    got = decode_pixels(content, 10**8)
    assert got is not None and expected is not None
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x89PNG\r\n\x1a\n",
        cv_png(gray8(64, 64))[:200],  # truncated in the middle of its data
        cv_png(gray8(64, 64))[:-20] + b"\x00" * 20,  # a damaged end
        b"not an image at all" * 10,
    ],
    ids=["empty", "signature only", "truncated", "damaged end", "not an image"],
)
def test_what_opencv_refuses_is_refused(content: bytes) -> None:
    expected = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED) if content else None
    got = decode_pixels(content, 10**8) if content else None
    assert (got is None) == (expected is None)
    if got is not None and expected is not None:
        assert np.array_equal(got, expected)


def test_over_the_pixel_limit_goes_to_opencv() -> None:
    content = cv_png(gray8(100, 100))
    assert fast_png(content, 100 * 100) and not fast_png(content, 100 * 100 - 1)
