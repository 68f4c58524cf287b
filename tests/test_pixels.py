"""The decode stage's fast PNG path gives OpenCV's pixels exactly, and leaves every other case to OpenCV
(daemon/intake/pixels.py). A corpus of PNG kinds written by OpenCV and by Pillow (interlaced, palette,
alpha, 16-bit, odd sizes), plus broken files."""

from __future__ import annotations

import io
import itertools
import struct
import zlib
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


def filtered_png(image: np.ndarray, filters: list[int], extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A grayscale PNG written here with the given filter type on each row (0 None, 1 Sub, 2 Up, 3 Average,
    4 Paeth), ``extra`` chunks before the image data: the writers above each use one filter."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    depth = 16 if image.dtype == np.uint16 else 8
    bpp = depth // 8
    rows = np.frombuffer(image.astype(">u2").tobytes() if depth == 16 else image.tobytes(), np.uint8)
    rows = rows.reshape(image.shape[0], -1).astype(np.int32)
    raw = b""
    for i, kind in enumerate(filters):
        x = rows[i]
        up = rows[i - 1] if i else np.zeros_like(x)
        left = np.r_[np.zeros(bpp, np.int32), x[:-bpp]]
        upleft = np.r_[np.zeros(bpp, np.int32), up[:-bpp]]
        p = left + up - upleft
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        predictor = [0 * x, left, up, (left + up) // 2, paeth][kind] if kind < 5 else 0 * x
        raw += bytes([kind]) + ((x - predictor) % 256).astype(np.uint8).tobytes()
    h, w = image.shape
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0))
        + b"".join(chunk(kind, data) for kind, data in extra)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def some_filters(count: int, kinds: tuple[int, ...]) -> list[int]:
    return [kinds[int(v)] for v in rng.integers(0, len(kinds), count)]


def cv_default_png(image: np.ndarray) -> bytes:
    """What ``cv2.imwrite`` writes with no parameters: every row filtered Sub."""
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return bytes(buf.tobytes())


# name: (bytes, what png.py makes of it: True pixels, LIBPNG (a plain file for libpng), None (OpenCV's),
# or ... (whatever the writer's filters lead to))
REBUILT: dict[str, tuple[Callable[[], bytes], object]] = {
    "OpenCV's defaults, 8-bit": (lambda: cv_default_png(gray8(64, 80)), True),
    "OpenCV's defaults, 16-bit": (lambda: cv_default_png(gray16(40, 30)), True),
    "OpenCV's defaults, 1 column": (lambda: cv_default_png(gray8(9, 1)), True),
    "OpenCV's defaults, 1x1": (lambda: cv_default_png(gray8(1, 1)), True),
    "OpenCV, compression 3 (adaptive filters)": (lambda: cv_png(gray8(64, 80)), ...),
    "None, Sub and Up rows mixed, 8-bit": (
        lambda: filtered_png(gray8(40, 23), some_filters(40, (0, 1, 2))),
        True,
    ),
    "None, Sub and Up rows mixed, 16-bit": (
        lambda: filtered_png(gray16(31, 17), some_filters(31, (0, 1, 2))),
        True,
    ),
    "Up on the first row and in runs": (
        lambda: filtered_png(gray8(12, 9), [2, 2, 1, 2, 2, 2, 0, 2, 1, 1, 2, 2]),
        True,
    ),
    "every row None": (lambda: filtered_png(gray8(5, 6), [0] * 5), True),
    "a text chunk and a gamma": (
        lambda: filtered_png(
            gray8(8, 8), [1] * 8, ((b"tEXt", b"Software\x00camera"), (b"gAMA", b"\x00\x00\xb1\x8f"))
        ),
        True,
    ),
    "Average and Paeth rows": (
        lambda: filtered_png(gray8(30, 20), [3, 4, *some_filters(28, (0, 1, 2, 3, 4))]),
        "libpng",
    ),
    "Paeth rows, 16-bit": (lambda: filtered_png(gray16(10, 10), [4] * 10), "libpng"),
    "a chunk it does not know (sBIT)": (
        lambda: filtered_png(gray8(8, 8), [1] * 8, ((b"sBIT", b"\x05"),)),
        None,
    ),
    "interlaced": (lambda: adam7_png(gray8(45, 61)), "libpng"),
    "Pillow, 8-bit": (lambda: pil_png(Image.fromarray(gray8(20, 30))), ...),  # whatever filters Pillow picks
}


@pytest.mark.parametrize("name", list(REBUILT))
def test_rows_rebuilt_by_libdeflate_and_a_delta_decode_are_opencvs(name: str) -> None:
    """png.py rebuilds the plain files (None, Sub and Up rows) and leaves the rest to libpng; either way
    the pixels are OpenCV's."""
    from inspectd.daemon.intake import png

    make, rebuilt = REBUILT[name]
    content = make()
    expected = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert expected is not None
    direct = png.decode(content)
    if rebuilt is True:
        assert isinstance(direct, np.ndarray)
    elif rebuilt is not ...:
        assert isinstance(direct, str | None) and direct == rebuilt
    if isinstance(direct, np.ndarray):
        assert direct.dtype == expected.dtype and np.array_equal(direct, expected)
    got = decode_pixels(content, 10**8)
    assert got is not None and got.dtype == expected.dtype and np.array_equal(got, expected)


def built(
    width: int,
    height: int,
    before: list[tuple[bytes, bytes]] | None = None,
    after: list[tuple[bytes, bytes]] | None = None,
    crc: int | None = None,
) -> bytes:
    """A grayscale 8-bit PNG of zeros (Sub rows), ``before`` and ``after`` its image data; ``crc`` for
    the chunks after it, instead of their right CRC."""

    def chunk(kind: bytes, data: bytes, right: bool = True) -> bytes:
        check = zlib.crc32(kind + data) if right or crc is None else crc
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", check)

    rows = b"".join(b"\x01" + bytes(width) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + b"".join(chunk(k, d) for k, d in before or [])
        + chunk(b"IDAT", zlib.compress(rows))
        + b"".join(chunk(k, d, right=False) for k, d in after or [])
        + chunk(b"IEND", b"")
    )


def damaged(content: bytes, where: str) -> bytes:
    """``content`` with one byte of its IDAT chunk's data, its CRC or its zlib checksum changed."""
    at = content.index(b"IDAT")
    length = int.from_bytes(content[at - 4 : at], "big")
    offset = {"data": at + 4 + length // 2, "crc": at + 4 + length, "adler": at + 4 + length - 1}[where]
    return content[:offset] + bytes([content[offset] ^ 0x10]) + content[offset + 1 :]


def recrc(content: bytes) -> bytes:
    """``content`` with its IDAT chunk's CRC recomputed (a damaged stream that still passes the CRC)."""
    import zlib

    at = content.index(b"IDAT")
    length = int.from_bytes(content[at - 4 : at], "big")
    crc = zlib.crc32(content[at : at + 4 + length]).to_bytes(4, "big")
    return content[: at + 4 + length] + crc + content[at + 8 + length :]


@pytest.mark.parametrize(
    "make",
    [
        lambda: damaged(cv_default_png(gray8(64, 64)), "data"),
        lambda: damaged(cv_default_png(gray8(64, 64)), "crc"),
        lambda: recrc(damaged(cv_default_png(gray8(64, 64)), "adler")),
        lambda: recrc(damaged(cv_default_png(gray8(64, 64)), "data")),
        lambda: cv_default_png(gray8(64, 64))[:-12],  # no IEND
        lambda: cv_default_png(gray8(64, 64)) + b"trailing bytes",
        lambda: filtered_png(gray8(4, 4), [1, 5, 1, 1]),  # a filter type that does not exist
        lambda: built(1_000_001, 1),  # wider than libpng's limit in OpenCV
        lambda: built(6, 5, before=[(b"gAMA", b"x" * 7_999_989)]),  # a chunk OpenCV finds too long
        lambda: built(6, 5, after=[(b"IDAT", b"xx")], crc=1),  # a damaged chunk after the image data
        lambda: built(6, 5, after=[(b"ABCD", b"")]),  # a critical chunk nobody knows, after it
        lambda: built(6, 5, after=[(b"IHDR", struct.pack(">IIBBBBB", 6, 5, 8, 0, 0, 0, 0))]),
    ],
    ids=[
        "data",
        "CRC",
        "Adler-32 with its CRC right",
        "data with its CRC right",
        "no IEND",
        "bytes after IEND",
        "filter 5",
        "a side over 1,000,000",
        "a long chunk before the data",
        "damaged after the data",
        "an unknown critical chunk",
        "a second IHDR",
    ],
)
def test_a_damaged_file_is_not_rebuilt_and_gets_opencvs_answer(make: Callable[[], bytes]) -> None:
    from inspectd.daemon.intake import png

    content = make()
    assert not isinstance(png.decode(content), np.ndarray)
    expected = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    got = decode_pixels(content, 10**8)
    assert (got is None) == (expected is None)
    if got is not None and expected is not None:
        assert np.array_equal(got, expected)


def split_idat(content: bytes, pieces: int) -> bytes:
    """``content`` with its one IDAT chunk cut into ``pieces`` IDAT chunks."""
    at = content.index(b"IDAT") - 4
    length = int.from_bytes(content[at : at + 4], "big")
    data = content[at + 8 : at + 8 + length]
    cuts = np.linspace(0, len(data), pieces + 1).astype(int)
    chunks = b"".join(
        struct.pack(">I", b - a) + b"IDAT" + data[a:b] + struct.pack(">I", zlib.crc32(b"IDAT" + data[a:b]))
        for a, b in itertools.pairwise(cuts.tolist())
    )
    return content[:at] + chunks + content[at + 12 + length :]


MUTATED: dict[str, Callable[[], bytes]] = {
    "8-bit, Sub rows": lambda: cv_default_png(gray8(40, 50)),
    "16-bit, Sub rows": lambda: cv_default_png(gray16(20, 30)),
    "8-bit, mixed rows in three IDAT chunks": lambda: split_idat(
        filtered_png(gray8(30, 20), some_filters(30, (0, 1, 2))), 3
    ),
    "8-bit, Paeth rows": lambda: filtered_png(gray8(20, 20), [4] * 20),
}


@pytest.mark.parametrize("name", list(MUTATED))
def test_a_byte_changed_anywhere_gives_opencvs_answer(name: str) -> None:
    """300 files, each a PNG with one byte changed somewhere past the signature (header, data, checksums,
    lengths, chunk types): the decode stage answers as OpenCV does, pixels or refusal."""
    base = MUTATED[name]()
    mutations = np.random.default_rng(len(name))
    for _ in range(300):
        content = bytearray(base)
        at = int(mutations.integers(8, len(content)))
        content[at] ^= int(mutations.integers(1, 256))
        expected = cv2.imdecode(np.frombuffer(bytes(content), np.uint8), cv2.IMREAD_UNCHANGED)
        got = decode_pixels(bytes(content), 10**8)
        assert (got is None) == (expected is None), at
        if got is not None and expected is not None:
            assert got.shape == expected.shape and np.array_equal(got, expected), at


def test_runs_of_rows() -> None:
    from inspectd.daemon.intake.png import runs

    assert runs(np.array([True, True, False, True, False, False, True, True, True])) == [
        (0, 2),
        (3, 4),
        (6, 9),
    ]
    assert runs(np.array([False, False])) == [] and runs(np.array([True])) == [(0, 1)]
