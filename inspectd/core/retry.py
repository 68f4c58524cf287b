"""Waiting out a database outage: one policy for the daemon's start and for every batch.

Exponential backoff from ``[database] retry_initial_s`` to ``retry_max_s`` with random jitter (tenacity),
so stations that lost one PostgreSQL do not all hit it again at the same instant when it comes back.
Only transient errors are retried (db.transient); the wait is cut short, raising ``Aborted``, when
``should_abort`` says so (a stop that cannot wait any longer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from inspectd.core import db

_T = TypeVar("_T")
POLL_S = 0.1  # how often a wait looks at should_abort


class Aborted(Exception):
    """The database stayed unreachable until shutdown."""


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, SQLAlchemyError) and db.transient(exc)


def until_available(
    operation: Callable[[], _T],
    initial_s: float,
    max_s: float,
    on_failure: Callable[[SQLAlchemyError, float], None],
    should_abort: Callable[[], bool] = lambda: False,
) -> _T:
    """``operation()``, retried while it fails with a transient database error; ``on_failure(error,
    seconds to the next try)`` is called before each wait. Any other error is raised at once."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        assert isinstance(error, SQLAlchemyError)
        delay = state.upcoming_sleep
        on_failure(error, delay)
        if should_abort():
            raise Aborted("database unreachable at shutdown") from error

    def sleep(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if should_abort():
                raise Aborted("database unreachable at shutdown")
            time.sleep(min(POLL_S, left))

    retrying = Retrying(
        retry=retry_if_exception(_transient),
        wait=wait_exponential_jitter(initial=initial_s, max=max_s, jitter=initial_s),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(operation)
