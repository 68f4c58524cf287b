"""Decode stage: read a ready file once, hash its bytes, decode and preprocess it, or say why not.

Two steps, so that a shared incoming folder can claim a file by its hash between them (claims.py):
``load`` reads and hashes, ``decode_loaded`` decodes; ``decode`` does both.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass

import cv2
import numpy as np

from inspectd.preprocess import UnsupportedImage
from inspectd.records import Decoded, Loaded, ReadyFile, Rejected, Vanished
from inspectd.tiles import View, boxes_for, cut

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_pixels: int
    max_file_bytes: int
    min_side: int = 8
    max_aspect_ratio: float = 50.0


def install_pixel_limit(max_pixels: int) -> None:
    """OpenCV refuses images whose header declares more pixels than this, before allocating them."""
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(max_pixels)


def identity_hash(kind: str, name: str, st: os.stat_result) -> str:
    """A stable key for something whose bytes cannot be read (a link, a folder, an unreadable file)."""
    return hashlib.sha256(f"{kind}\0{name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


def decode(ready: ReadyFile, limits: DecodeLimits, view: View) -> Decoded | Rejected | Vanished:
    loaded = load(ready, limits)
    return decode_loaded(loaded, limits, view) if isinstance(loaded, Loaded) else loaded


def load(ready: ReadyFile, limits: DecodeLimits) -> Loaded | Rejected | Vanished:
    """Read the file's bytes once (no links, nothing over the size limit) and hash them."""
    path = ready.path
    try:
        st = path.lstat()
    except FileNotFoundError:
        return Vanished(ready)
    if stat.S_ISLNK(st.st_mode):
        return Rejected(
            ready, identity_hash("symlink", path.name, st), 0, "symlink", "symbolic links are not followed"
        )
    if not stat.S_ISREG(st.st_mode):
        return Rejected(
            ready,
            identity_hash("special", path.name, st),
            0,
            "not_a_file",
            "not a regular file (a folder, a device or a pipe)",
        )
    if st.st_size > limits.max_file_bytes:
        return Rejected(
            ready,
            identity_hash("oversize", path.name, st),
            st.st_size,
            "file_too_large",
            f"{st.st_size} bytes is over decode.max_file_bytes = {limits.max_file_bytes}",
        )
    try:
        content = _read(path, st.st_size, limits.max_file_bytes)
    except FileNotFoundError:
        return Vanished(ready)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a symlink after the lstat
            return Rejected(
                ready,
                identity_hash("symlink", path.name, st),
                0,
                "symlink",
                "symbolic links are not followed",
            )
        return Rejected(
            ready,
            identity_hash("unreadable", path.name, st),
            st.st_size,
            "unreadable",
            f"cannot read: {exc.strerror}",
        )
    digest = hashlib.sha256(content).hexdigest()
    if not content:
        return Rejected(ready, digest, 0, "empty_file", "the file is empty")
    if len(content) > limits.max_file_bytes:  # it grew after the lstat
        return Rejected(
            ready,
            identity_hash("oversize", path.name, st),
            len(content),
            "file_too_large",
            f"over decode.max_file_bytes = {limits.max_file_bytes}",
        )
    return Loaded(ready, digest, content)


def _read(path: os.PathLike[str], expected: int, limit: int) -> bytes:
    """The file's bytes, at most ``limit + 1`` of them (one more than allowed tells it is too large).

    Sized reads: ``read(limit + 1)`` on a buffered file allocates the whole limit up front (256 MiB by
    default), which cost ~0.4 ms an image in page mapping; a file that grew since ``expected`` was seen
    is still read to its end (or the limit).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        chunks: list[bytes] = []
        total = 0
        want = min(expected, limit) + 1
        while total <= limit:
            chunk = os.read(fd, min(max(want - total, 1 << 16), limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def decode_loaded(loaded: Loaded, limits: DecodeLimits, view: View) -> Decoded | Rejected:
    ready, digest, content = loaded.source, loaded.sha256, loaded.content
    size_bytes = len(content)
    try:
        image = cv2.imdecode(np.frombuffer(content, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return Rejected(
            ready,
            digest,
            size_bytes,
            "too_many_pixels",
            f"declared dimensions exceed decode.max_pixels = {limits.max_pixels}",
        )
    if image is None:
        return Rejected(
            ready,
            digest,
            size_bytes,
            "decode_failed",
            "not a decodable PNG/JPEG/BMP/TIFF image (corrupt, truncated or another format)",
        )
    height, width = image.shape[:2]
    if height * width > limits.max_pixels:
        return Rejected(
            ready,
            digest,
            size_bytes,
            "too_many_pixels",
            f"{width}x{height} exceeds decode.max_pixels = {limits.max_pixels}",
            width,
            height,
        )
    if min(height, width) < limits.min_side:
        return Rejected(
            ready,
            digest,
            size_bytes,
            "too_small",
            f"{width}x{height} is below the minimum side of {limits.min_side} px",
            width,
            height,
        )
    if max(height, width) / min(height, width) > limits.max_aspect_ratio:
        return Rejected(
            ready,
            digest,
            size_bytes,
            "extreme_aspect_ratio",
            f"{width}x{height} has an aspect ratio over {limits.max_aspect_ratio:g}",
            width,
            height,
        )
    try:
        boxes = boxes_for(view, width, height)
    except ValueError as exc:
        return Rejected(ready, digest, size_bytes, "roi_outside_frame", str(exc), width, height)
    try:
        tiles = cut(image, boxes, view.input_size)
    except UnsupportedImage as exc:
        return Rejected(ready, digest, size_bytes, "unsupported_format", str(exc), width, height)
    return Decoded(ready, digest, size_bytes, width, height, tiles, tuple(boxes))
