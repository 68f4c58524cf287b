"""Grayscale PNGs rebuilt from their rows: libdeflate inflates the image data (imagecodecs'
``deflate_decode``, which checks the zlib stream's Adler-32) into a buffer of its own, and the PNG row
filters None, Sub and Up are undone in place with ``delta_decode`` and numpy; the chunks' CRCs are
libdeflate's too (a fifth of zlib's time). On ``make bench``'s 1280x1024 frames (``cv2.imwrite`` with its
defaults filters every row Sub) this takes under half of libpng's time: most of libpng's is zlib's
inflate.

Only a plain file takes this path: 8- or 16-bit grayscale, every chunk's CRC right, the image data in
consecutive IDAT chunks, no chunk but the few that carry no pixels, an IEND and nothing after it, within
the limits of OpenCV's reader (a side of at most 1,000,000 pixels; a chunk before the image data of at
most 8,000,000 bytes with its length, type and CRC), and rows filtered None, Sub or Up only. A plain
file that is interlaced or has Average or Paeth rows is ``LIBPNG``: libpng decodes it (pixels.py).
Pillow's and libpng's adaptive choice gives mostly Paeth rows on photographs; each depends on the row's
own decoded bytes. Anything else is None and OpenCV decides: libpng through imagecodecs reads only as
far as the image data and would accept a file damaged after it.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from typing import Final, Literal

import imagecodecs
import numpy as np
import numpy.typing as npt

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# chunks that change nothing in OpenCV's IMREAD_UNCHANGED pixels of a grayscale image
NO_PIXELS = frozenset({b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs", b"gAMA", b"cHRM", b"sRGB", b"iCCP"})
NONE, SUB, UP = 0, 1, 2  # PNG filter types
MAX_SIDE = 1_000_000  # libpng's user limit in OpenCV's reader: a wider or taller image is refused
MAX_EARLY_CHUNK = 8_000_000  # OpenCV's reader refuses a longer chunk (with its 12 bytes) before the data
LIBPNG: Final = "libpng"  # a plain file libpng must decode (interlaced, Average or Paeth rows)


@dataclass(frozen=True)
class Plain:
    width: int
    height: int
    depth: int  # 8 or 16
    interlaced: bool
    data: bytes  # the zlib stream of the IDAT chunks


def plain(content: bytes) -> Plain | None:
    """The header and image data of a plain grayscale PNG (see the module), None for anything else. The
    caller has checked the pixel limit (pixels.fast_png)."""
    if content[:8] != SIGNATURE:
        return None
    view = memoryview(content)  # chunks checked and gathered without copies
    at, header, ended, idat_done = 8, None, False, False
    parts: list[memoryview] = []
    while at + 12 <= len(content) and not ended:
        length, kind = struct.unpack_from(">I4s", content, at)
        end = at + 12 + length
        if end > len(content) or _crc32(view[at + 4 : end - 4]) != _u32(content, end - 4):
            return None
        if not parts and kind != b"IDAT" and length + 12 > MAX_EARLY_CHUNK:
            return None
        body = view[at + 8 : end - 4]
        if header is None:
            if kind != b"IHDR" or length != 13:
                return None
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            if idat_done:
                return None
            parts.append(body)
        elif kind == b"IEND" and length == 0:
            ended = True
        elif kind in NO_PIXELS:
            idat_done = bool(parts)
        else:
            return None
        at = end
    if header is None or not ended or not parts or at != len(content):
        return None
    width, height, depth, colour, compression, filtering, interlace = header
    if colour != 0 or depth not in (8, 16) or (compression, filtering) != (0, 0) or interlace not in (0, 1):
        return None
    if not 0 < width <= MAX_SIDE or not 0 < height <= MAX_SIDE:
        return None
    return Plain(width, height, depth, interlace == 1, b"".join(parts))


def _crc32(data: memoryview) -> int:
    """libdeflate's CRC-32 of a chunk, read where it lies (the stubs say bytes; any buffer is read)."""
    value: int = imagecodecs.deflate_crc32(data)  # type: ignore[arg-type]
    return value


def _u32(content: bytes, at: int) -> int:
    value: int = struct.unpack_from(">I", content, at)[0]
    return value


def runs(rows: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """The (first, last + 1) of each run of consecutive true rows."""
    at = np.flatnonzero(rows)
    if not len(at):
        return []
    breaks = np.flatnonzero(np.diff(at) != 1)
    starts, stops = at[np.r_[0, breaks + 1]], at[np.r_[breaks, len(at) - 1]] + 1
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def unfilter(raw: npt.NDArray[np.uint8], bpp: int) -> npt.NDArray[np.uint8] | None:
    """(height, 1 + row bytes) filtered rows, unfiltered in place: the (height, row bytes) view of ``raw``
    past each row's filter byte; None (``raw`` untouched) when a row uses a filter other than None, Sub
    or Up."""
    filters = raw[:, 0]
    if int(filters.max()) > UP:
        return None
    height, width = raw.shape[0], (raw.shape[1] - 1) // bpp
    out = raw[:, 1:].reshape(height, width, bpp)  # a view: the rows' bytes stay where they are
    for first, stop in runs(filters == SUB):  # Sub: a running sum along the row, byte by byte, bpp apart
        imagecodecs.delta_decode(out[first:stop], axis=1, out=out[first:stop])
    for first, stop in runs(filters == UP):  # Up: a running sum down the run, from the row above it
        block = out[max(first - 1, 0) : stop]
        np.cumsum(block, axis=0, dtype=np.uint8, out=block)
    return raw[:, 1:]


def decode(content: bytes) -> npt.NDArray[np.generic] | Literal["libpng"] | None:
    """The pixels OpenCV's IMREAD_UNCHANGED gives a plain grayscale PNG; ``LIBPNG`` for a plain file this
    cannot rebuild (interlaced, Average or Paeth rows); None for anything else (not plain, or its image
    data does not inflate to exactly its rows): then OpenCV decides."""
    found = plain(content)
    if found is None:
        return None
    if found.interlaced:
        return LIBPNG
    height, bpp = found.height, found.depth // 8
    row_bytes = found.width * bpp
    buffer = np.empty(height * (1 + row_bytes), np.uint8)  # the filtered rows, then the image in place
    try:
        inflated = imagecodecs.deflate_decode(found.data, out=buffer.data)
    except (imagecodecs.DeflateError, ValueError):
        return None
    del found  # the compressed copy: the buffer alone from here on
    if len(inflated) != len(buffer):
        return None
    rows = unfilter(buffer.reshape(height, 1 + row_bytes), bpp)
    if rows is None:
        return LIBPNG
    if bpp == 1:
        return rows  # rows of the buffer, each past its filter byte (OpenCV reads such strides as they are)
    pixels = np.ascontiguousarray(rows).view(np.uint16)  # 16-bit samples aligned, made native in place
    if sys.byteorder == "little":
        pixels.byteswap(inplace=True)
    return pixels
