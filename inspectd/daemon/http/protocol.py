"""uvicorn's h11 protocol, guarded: a deadline from connect and a cap on open connections."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from inspectd.core import logs

log = logs.get("inspectd.http")

REFUSED_LOG_INTERVAL_S = 60.0


# --- the protocol: idle deadline and connection cap ----------------------------------------------------


@dataclass
class _Limits:
    max_connections: int
    idle_timeout_s: float
    refused: int = 0  # connections closed at accept, since start
    _warned_at: float = -math.inf
    _warned_refused: int = 0

    def refuse(self) -> None:
        """Count a refused connection; a warning at most every REFUSED_LOG_INTERVAL_S while they go on."""
        self.refused += 1
        now = time.monotonic()
        if now - self._warned_at >= REFUSED_LOG_INTERVAL_S:
            log.warning(
                "http.connection_refused",
                max_connections=self.max_connections,
                refused=self.refused - self._warned_refused,
                refused_total=self.refused,
            )
            self._warned_at, self._warned_refused = now, self.refused


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline from connect and a cap on open connections.

    uvicorn arms its keep-alive timeout only after a response and cancels it at the first byte received,
    so a socket that never sends, or sends a request slowly, would stay open for ever; and its
    ``limit_concurrency`` answers 503 to requests but still accepts and holds every socket. Subclassed
    once per server (``_protocol_for``) with that server's ``_Limits``.
    """

    limits: ClassVar[_Limits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            transport.abort()  # its descriptor is freed now; the client sees the connection closed
            self.limits.refuse()
            return
        super().connection_made(transport)
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_deadline()

    def _arm_deadline(self) -> None:
        self._disarm_deadline()
        self._deadline = self.loop.call_later(self.limits.idle_timeout_s, self._deadline_passed)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete and self.conn.their_state is h11.DONE:
            return  # a whole request is being answered: the end of its response arms the next deadline
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()


def _protocol_for(limits: _Limits) -> type[_GuardedH11]:
    return type("GuardedH11", (_GuardedH11,), {"limits": limits})
