"""Progress and time left of retrain's long steps: a tqdm bar on a terminal; in a log (not a terminal), a
``progress`` event every LOG_EVERY_S seconds and one at the end, with tqdm's rate and time left."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from inspectd.core import logs

T = TypeVar("T")
LOG_EVERY_S = 10.0
log = logs.get("inspectd.train")


def progress(items: Iterable[T], what: str, total: int | None = None) -> Iterator[T]:
    from tqdm import tqdm

    if sys.stderr.isatty():
        yield from tqdm(items, desc=what, total=total, file=sys.stderr, dynamic_ncols=True, leave=True)
        return
    started = last = time.monotonic()
    done = 0

    def report(now: float) -> None:
        meter = tqdm.format_meter(done, total, now - started)
        log.info("progress", step=what, done=done, total=total, meter=meter)

    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            last = now
            report(now)
    report(time.monotonic())
