"""Keeping the daemon's memory flat over days (glibc only; elsewhere these do nothing).

Each image passes through a few buffers of a megabyte or more (the file's bytes, the decoded frame), made
and freed by several threads. glibc starts by mmapping such buffers and raises its mmap threshold the
first time a large mmapped block is freed; from then on they come from the heap arenas, so memory steps
up at some moment long after start (measured: +5 MiB near the 20,000th image, flat before and after).
Fixing the threshold above those buffers from the start makes that the state from the first image (and
spares a page fault per 4 KiB of every buffer, which mmapping them each time costs: about 15% of the
throughput, measured); ``trim`` hands back what the heap holds once a burst is over.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's own upper bound for the dynamic threshold
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024  # no trimming between images: ``trim`` does it when idle


def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc has it, musl does not
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


LIBC = _libc()


def fix_mmap_threshold() -> bool:
    """Large image buffers from the heap from the first image on, and no heap trimming between images
    (setting a threshold turns glibc's dynamic ones off, trimming included: the top of the heap would
    otherwise be given back and taken again for every image)."""
    if LIBC is None:
        return False
    return bool(
        LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and LIBC.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def trim() -> None:
    """Hand freed heap pages back to the system."""
    if LIBC is not None:
        LIBC.malloc_trim(0)
