"""Decode stage: read a ready file once, hash its bytes, decode and preprocess it, or say why not.

Two steps, so that a shared incoming folder can claim a file by its hash between them (claims.py):
``load`` opens, reads and hashes, ``decode_loaded`` decodes; ``decode`` does both. The file is opened
once; its descriptor travels with it (``ReadyFile.opened``) so that the archive stage moves the very
inode that was read. A file that changed while it was read is ``Changed`` (not final). Memory is bounded
by a budget (budget.py) that each read and decode reserves from before it allocates.

(Over 300 lines on purpose: every reason a file is refused, and the order the checks run in, is here.)
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass

import cv2
from PIL import Image

from inspectd.core.preprocess import UnsupportedImage
from inspectd.core.records import Changed, Decoded, FileId, Loaded, OpenFile, ReadyFile, Rejected, Vanished
from inspectd.core.tiles import View, boxes_for, cut, shrink_for
from inspectd.daemon.intake.budget import UNBOUNDED, MemoryBudget, OverBudget, Reservation
from inspectd.daemon.intake.pixels import decode_pixels

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
Image.MAX_IMAGE_PIXELS = None  # only the header is read; decode.max_pixels is the limit
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")  # damaged EXIF, read by OpenCV


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_pixels: int
    max_file_bytes: int
    min_side: int = 8
    max_aspect_ratio: float = 50.0


def install_pixel_limit(max_pixels: int) -> None:
    """OpenCV refuses images whose header declares more pixels than this, before allocating them."""
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(max_pixels)


def identity_hash(kind: str, name: str, st: os.stat_result | FileId) -> str:
    """A stable key for something whose bytes cannot be read or tell nothing (a link, a folder, an
    unreadable or empty file): the name, the inode, the size and the mtime."""
    if isinstance(st, os.stat_result):
        st = FileId.of(st)
    key = f"{kind}\0{os.fsencode(name)!r}\0{st.dev}:{st.ino}\0{st.size}\0{st.mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()


def decode(
    ready: ReadyFile, limits: DecodeLimits, view: View, budget: MemoryBudget | None = None
) -> Decoded | Rejected | Vanished | Changed:
    """Read and decode a file in one go (its descriptor stays open in the result's ``source``)."""
    held = Reservation(budget)
    try:
        loaded = load(ready, limits, held)
        if not isinstance(loaded, Loaded):
            return loaded
        try:
            return decode_loaded(loaded, limits, view, held)
        except BaseException:  # the per-image boundary records it; the descriptor must not leak
            loaded.source.close()
            raise
    finally:
        held.release()


def decode_closed(
    ready: ReadyFile, limits: DecodeLimits, view: View
) -> Decoded | Rejected | Vanished | Changed:
    """``decode`` for tools that only want the pixels (training, explain): the file is closed after."""
    result = decode(ready, limits, view)
    if not isinstance(result, Vanished):
        result.source.close()
    return result


def open_file(ready: ReadyFile, limits: DecodeLimits) -> ReadyFile | Rejected | Vanished | Changed:
    """Open the file once (no links, no pipes or devices, nothing over the size limit): from here on it
    is this inode, whatever happens to the name."""
    path = ready.path
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return Vanished(ready)
    rejected = _not_a_regular_file(ready, st)
    if rejected is not None:
        return rejected
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return Vanished(ready)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a symlink after the lstat
            return Rejected(ready, identity_hash("symlink", path.name, st), 0, "symlink", _LINK)
        if exc.errno in _TRANSIENT:  # out of descriptors or memory: not the file's fault, look again
            return Changed(ready)
        return Rejected(
            ready,
            identity_hash("unreadable", path.name, st),
            st.st_size,
            "unreadable",
            f"cannot open: {exc.strerror}",
        )
    st = os.fstat(fd)  # what was opened: a FIFO or a device swapped in after the lstat is caught here
    opened = ready.with_file(OpenFile(fd, FileId.of(st)))
    rejected = _not_a_regular_file(opened, st)
    if rejected is not None:
        return rejected
    if st.st_size > limits.max_file_bytes:
        return Rejected(
            opened,
            identity_hash("oversize", path.name, st),
            st.st_size,
            "file_too_large",
            f"{st.st_size} bytes is over decode.max_file_bytes = {limits.max_file_bytes}",
        )
    return opened


_LINK = "symbolic links are not followed"
_TRANSIENT = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR)


def _not_a_regular_file(ready: ReadyFile, st: os.stat_result) -> Rejected | None:
    if stat.S_ISLNK(st.st_mode):
        return Rejected(ready, identity_hash("symlink", ready.path.name, st), 0, "symlink", _LINK)
    if not stat.S_ISREG(st.st_mode):
        return Rejected(
            ready,
            identity_hash("special", ready.path.name, st),
            0,
            "not_a_file",
            "not a regular file (a folder, a device or a pipe)",
        )
    return None


def load(
    ready: ReadyFile, limits: DecodeLimits, held: Reservation = UNBOUNDED, keep: bool = True
) -> Loaded | Rejected | Vanished | Changed:
    """Open the file, read its bytes once and hash them. ``keep=False`` (a shared folder, where the hash
    is claimed before the decode) hashes in chunks and keeps nothing: ``decode_loaded`` reads again from
    the same descriptor."""
    opened = open_file(ready, limits)
    if not isinstance(opened, ReadyFile):
        return opened
    try:
        return _load_opened(opened, limits, held, keep)
    except BaseException:  # the per-image boundary records it; the descriptor must not leak
        opened.close()
        raise


def _load_opened(
    opened: ReadyFile, limits: DecodeLimits, held: Reservation, keep: bool
) -> Loaded | Rejected | Changed:
    ready = opened
    assert opened.opened is not None
    file_id = opened.opened.id
    try:
        if keep:
            held.ensure(file_id.size + 1)
            data = _read(opened, limits.max_file_bytes)
            content: bytes | None = data
            digest, size = hashlib.sha256(data).hexdigest(), len(data)
        else:
            content = None
            digest, size = _hash(opened, limits.max_file_bytes)
    except OverBudget as exc:
        return Rejected(
            opened,
            identity_hash("oversize", ready.path.name, file_id),
            file_id.size,
            "file_too_large",
            f"over decode.max_memory_mib: {exc}",
        )
    except OSError as exc:
        return Rejected(
            opened,
            identity_hash("unreadable", ready.path.name, file_id),
            file_id.size,
            "unreadable",
            f"cannot read: {exc.strerror}",
        )
    if changed(opened) or size != file_id.size:
        return Changed(opened)  # a writer is still at it: not final
    if size == 0:  # identity, not content: two empty files are two files, not duplicates
        return Rejected(
            opened, identity_hash("empty", ready.path.name, file_id), 0, "empty_file", "the file is empty"
        )
    if size > limits.max_file_bytes:  # it grew after the open
        return Rejected(
            opened,
            identity_hash("oversize", ready.path.name, file_id),
            size,
            "file_too_large",
            f"over decode.max_file_bytes = {limits.max_file_bytes}",
        )
    return Loaded(opened, digest, content)


def changed(ready: ReadyFile) -> bool:
    """The open file's size or mtime differ from when it was opened (written to since)."""
    opened = ready.opened
    assert opened is not None and opened.fd is not None
    return FileId.of(os.fstat(opened.fd)) != opened.id


def _read(ready: ReadyFile, limit: int) -> bytes:
    """The open file's bytes, at most ``limit + 1`` of them (one more than allowed tells it is too large).

    Sized reads: the size seen at the open, plus one byte to see whether it grew (then on to its end or
    the limit); a read of the whole limit would allocate it up front (256 MiB by default).
    """
    assert ready.opened is not None and ready.opened.fd is not None
    fd = ready.opened.fd
    chunks: list[bytes] = []
    total = 0
    want = min(ready.opened.id.size, limit) + 1
    while total <= limit:
        chunk = os.pread(fd, min(max(want - total, 1 << 16), limit + 1 - total), total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _hash(ready: ReadyFile, limit: int) -> tuple[str, int]:
    assert ready.opened is not None and ready.opened.fd is not None
    digest = hashlib.sha256()
    total = 0
    while total <= limit:
        chunk = os.pread(ready.opened.fd, 1 << 20, total)
        if not chunk:
            break
        digest.update(chunk)
        total += len(chunk)
    return digest.hexdigest(), total


# What OpenCV's IMREAD_UNCHANGED can make of an image, per pixel: its channels (a palette expands to four)
# times its deepest possible sample (Pillow's header modes do not tell 8- from 16-bit colour PNG or TIFF),
# plus the 8/16-bit gray copy that preprocessing makes.
_SAMPLE_BYTES = {"PNG": 2, "TIFF": 2, "JPEG": 1, "BMP": 1, "DIB": 1}
_WIDE_MODES = ("F", "I", "I;32")  # 32-bit samples (TIFF)


def decoded_bytes(content: bytes, max_pixels: int) -> int:
    """An upper bound of the memory decoding ``content`` takes, from its header alone."""
    try:
        with Image.open(io.BytesIO(content)) as im:
            width, height = im.size
            channels = 4 if im.mode in ("P", "PA") else len(im.getbands())
            sample = 4 if im.mode in _WIDE_MODES else _SAMPLE_BYTES.get(im.format or "", 4)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        width, height, channels, sample = max_pixels, 1, 4, 2  # a header Pillow cannot read: the worst
    return min(width * height, max_pixels) * (channels * sample + 2)


def shape_problem(width: int, height: int, limits: DecodeLimits) -> tuple[str, str] | None:
    """Why a decoded frame of this size cannot be classified (reason, detail), or None."""
    if height * width > limits.max_pixels:
        return "too_many_pixels", f"{width}x{height} exceeds decode.max_pixels = {limits.max_pixels}"
    if min(height, width) < limits.min_side:
        return "too_small", f"{width}x{height} is below the minimum side of {limits.min_side} px"
    if max(height, width) / min(height, width) > limits.max_aspect_ratio:
        return (
            "extreme_aspect_ratio",
            f"{width}x{height} has an aspect ratio over {limits.max_aspect_ratio:g}",
        )
    return None


def decode_loaded(
    loaded: Loaded, limits: DecodeLimits, view: View, held: Reservation = UNBOUNDED
) -> Decoded | Rejected | Changed:
    """Decode a loaded file (reading it again from its descriptor when its bytes were not kept)."""
    ready, digest, content = loaded.source, loaded.sha256, loaded.content
    try:
        if content is None:
            assert ready.opened is not None
            held.ensure(ready.opened.id.size + 1)
            content = _read(ready, limits.max_file_bytes)
            if changed(ready) or hashlib.sha256(content).hexdigest() != digest:
                return Changed(ready)
        held.ensure(len(content) + decoded_bytes(content, limits.max_pixels))
    except OverBudget as exc:
        return Rejected(
            ready,
            digest,
            len(content or b""),
            "too_large_to_decode",
            f"decoding it needs more than decode.max_memory_mib: {exc}",
        )
    except OSError as exc:
        return Rejected(ready, digest, len(content or b""), "unreadable", f"cannot read: {exc.strerror}")
    size_bytes = len(content)
    try:
        image = decode_pixels(content, limits.max_pixels)
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
    if (problem := shape_problem(width, height, limits)) is not None:
        return Rejected(ready, digest, size_bytes, *problem, width, height)
    try:
        boxes = boxes_for(view, width, height)
    except ValueError as exc:
        return Rejected(ready, digest, size_bytes, "roi_outside_frame", str(exc), width, height)
    try:
        kept = held.bytes + len(boxes) * view.input_size[0] * view.input_size[1] * 4  # float32 tiles
        plan = shrink_for(boxes, view.input_size)  # and, while they are cut, the frame shrunk once
        held.ensure(kept + (plan.working_bytes(image.dtype.itemsize) if plan is not None else 0))
        tiles = cut(image, boxes, view.input_size)
        held.shrink_to(kept)
    except OverBudget as exc:
        return Rejected(ready, digest, size_bytes, "too_large_to_decode", f"{len(boxes)} tiles: {exc}")
    except UnsupportedImage as exc:
        return Rejected(ready, digest, size_bytes, "unsupported_format", str(exc), width, height)
    # every 4th pixel each way: the same statistics within 0.003 (the drift bins are 0.05 wide) at a
    # sixteenth of the cost, which matters for a tiled frame's tens of tiles
    sample = tiles[:, ::4, ::4]
    brightness, contrast = float(sample.mean()), float(sample.std())
    return Decoded(ready, digest, size_bytes, width, height, tiles, tuple(boxes), brightness, contrast)
