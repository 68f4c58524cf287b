"""Image files of every kind the decode stage must accept or refuse."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import cv2
import numpy.typing as npt


def encode(image: npt.NDArray[Any], ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok, ext
    return bytes(buf.tobytes())


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * (width + 1) * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
