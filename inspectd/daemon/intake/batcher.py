"""Batch stage: gathers decoded files into micro-batches for one inference call.

A batch closes when it is full or when its oldest file has waited ``max_wait_s`` since it was ready; a file
that has already waited (while it was decoded, or while the previous batch ran) closes its batch at once,
so a lone image is never held back. Files already decoded and queued always join the batch.

Under a backlog (ready files no decode worker has taken yet) a batch fills up instead: the decoders are
the bottleneck then, and fewer, fuller batches leave them more of the CPU than many small ones would
(each batch costs an inference call, two queries and a commit on the pipeline thread).
"""

from __future__ import annotations

import time

from inspectd.daemon.intake.workers import Intake, Prepared, model_input_bytes

BATCH_BYTES_MAX = 128 << 20  # a batch of huge tiled frames closes once its tiles weigh this much
BEHIND_WAIT_S = 0.1  # under a backlog, how long to wait for the next decoded file before closing anyway


def collect(intake: Intake, max_size: int, max_wait_s: float, timeout: float) -> list[Prepared]:
    first = intake.get(timeout)
    if first is None:
        return []
    batch = [first]
    inputs = model_input_bytes(first.item)
    deadline = first.item.source.ready_at + max_wait_s
    while len(batch) < max_size and inputs < BATCH_BYTES_MAX:
        wait = deadline - time.monotonic()
        if wait <= 0 and intake.behind():
            wait = BEHIND_WAIT_S
        more = intake.get(max(0.0, wait))
        if more is None:
            break
        batch.append(more)
        inputs += model_input_bytes(more.item)
    return batch
