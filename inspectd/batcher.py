"""Batch stage: gathers ready files into micro-batches.

A batch closes when it is full or when its oldest file has waited ``max_wait_s``; a file that has already
waited (while the previous batch ran) closes its batch at once, so a lone image is never held back.
"""

from __future__ import annotations

import time

from inspectd.readiness import Readiness
from inspectd.records import ReadyFile


def collect(readiness: Readiness, max_size: int, max_wait_s: float, timeout: float) -> list[ReadyFile]:
    batch = readiness.take(max_size, timeout)
    if not batch:
        return batch
    deadline = batch[0].ready_at + max_wait_s
    while len(batch) < max_size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        more = readiness.take(max_size - len(batch), remaining)
        if not more:
            break
        batch.extend(more)
    return batch
