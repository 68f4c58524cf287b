"""The typed, immutable records that flow between stages, in pipeline order.

file event -> ReadyFile -> [Loaded -> claim ->] Decoded | Rejected | Held | Changed -> Scored -> Outcome

From the read on, a file is its open descriptor (``OpenFile``), not its name: the bytes hashed, decoded and
archived are those of the inode that was read, even if a writer replaces the name meanwhile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt


class Verdict(StrEnum):
    PRESENT = "present"
    ABSENT = "absent"


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"


class Disposition(StrEnum):
    """What happened to a file once its batch was committed."""

    RECORDED = "recorded"  # a new row, file archived or quarantined
    RECOVERED = "recovered"  # the row existed (an earlier run committed it): file moved where the row says
    DUPLICATE = "duplicate"  # the same bytes already have a row: no second row, file archived as a copy
    VANISHED = "vanished"  # the file disappeared before it could be read: nothing to record
    DEFERRED = "deferred"  # committed, but the move failed: the file stays in incoming and is retried
    CHANGED = "changed"  # written to while it was read: not final, left in incoming and looked at again
    UNRECORDED = "unrecorded"  # the database refused even its error row: left in incoming, retried later
    ELSEWHERE = "elsewhere"  # shared folder: another worker holds its claim; left in incoming for it


@dataclass(frozen=True, slots=True)
class FileId:
    """Which file a name pointed to when it was opened, and its size and mtime then."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileId:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def same_inode(self, st: os.stat_result) -> bool:
        return (self.dev, self.ino) == (st.st_dev, st.st_ino)


class OpenFile:
    """A file opened once, by the decode stage: its descriptor keeps the inode (and its bytes) alive until
    the archive stage has put them in place, even if a writer renames another file over the name."""

    __slots__ = ("fd", "id")

    def __init__(self, fd: int, file_id: FileId) -> None:
        self.fd: int | None = fd
        self.id = file_id

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __repr__(self) -> str:
        return f"OpenFile(fd={self.fd}, ino={self.id.ino})"


@dataclass(frozen=True, slots=True)
class ReadyFile:
    """A file judged completely written (readiness stage); from its read on, also its open descriptor."""

    path: Path
    ready_at: float  # time.monotonic() when judged ready: the start of the latency clock
    received_at: datetime  # wall-clock time of the same moment (UTC)
    opened: OpenFile | None = None  # set by the decode stage's read

    def with_file(self, opened: OpenFile) -> ReadyFile:
        return replace(self, opened=opened)

    def close(self) -> None:
        if self.opened is not None:
            self.opened.close()


@dataclass(frozen=True, slots=True)
class Loaded:
    """A file's bytes, read once, and their hash (decode stage, before the claim on a shared folder)."""

    source: ReadyFile
    sha256: str
    content: bytes | None  # None: hashed in chunks, not kept (read again from the descriptor to decode)


@dataclass(frozen=True, slots=True)
class Held:
    """Shared folder: the file's claim belongs to another worker (or could not be checked): not ours."""

    source: ReadyFile
    sha256: str
    holder: str | None  # None: the claim could not be checked (database unreachable)


Box = tuple[int, int, int, int]  # x, y, w, h in frame pixels


@dataclass(frozen=True, slots=True)
class Decoded:
    """A file read, hashed, decoded and preprocessed into the model's inputs (decode stage): one per tile,
    or one for the whole frame (region of interest)."""

    source: ReadyFile
    sha256: str
    size_bytes: int
    width: int
    height: int
    tiles: npt.NDArray[np.float32]  # (N, H, W, 1) float32 in [0, 1], at the model's input size
    boxes: tuple[Box, ...]  # where each of the N inputs lies in the frame
    brightness: float | None = None  # mean of the model's inputs, 0-1 (the drift gauges compare it)
    contrast: float | None = None  # their standard deviation


@dataclass(frozen=True, slots=True)
class Rejected:
    """A file that cannot be classified; recorded as an error row and quarantined (decode stage)."""

    source: ReadyFile
    sha256: str
    size_bytes: int
    reason: str  # a short machine-friendly code, e.g. "decode_failed", "too_many_pixels"
    detail: str  # a human sentence
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class Vanished:
    """The file disappeared between its event and the read."""

    source: ReadyFile


@dataclass(frozen=True, slots=True)
class Changed:
    """The file changed while it was read (a writer still at work): not final, looked at again later."""

    source: ReadyFile


@dataclass(frozen=True, slots=True)
class Scored:
    """A decoded image and the model's calibrated answer (infer stage)."""

    image: Decoded
    score: float
    verdict: Verdict
    model_version: str
    threshold: float
    box: Box | None = None  # tiled models: the best tile (where the symbol is)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final account of one file after persist + archive."""

    source: ReadyFile
    sha256: str | None
    disposition: Disposition
    latency_s: float  # file ready -> its batch committed
    status: Status | None = None  # None: no row is about it (left in incoming)
    verdict: Verdict | None = None  # a recorded image's answer
    score: float | None = None
    destination: Path | None = None  # where it is now (None: still in incoming)
    row_id: int | None = None
    reason: str | None = None
    look_again: bool = False  # the name in incoming holds another file now (or this one, not final yet)


Stage = Decoded | Rejected | Vanished | Held | Changed  # what the decode stage hands to the batch stage
