"""The main loop's periodic jobs: each runs when its interval has passed since its last run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Job:
    name: str
    every_s: float
    run: Callable[[], None]
    due: float


class Scheduler:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def every(self, name: str, seconds: float, run: Callable[[], None], first_at: float) -> None:
        """Run ``run`` at ``first_at`` (a time.monotonic() value), then every ``seconds``."""
        self.jobs.append(Job(name, seconds, run, first_at))

    def ran(self, name: str, now: float) -> None:
        """``name`` was just run out of turn: its next run is an interval from now."""
        for job in self.jobs:
            if job.name == name:
                job.due = now + job.every_s

    def due(self, now: float) -> list[str]:
        """Run the jobs that are due at ``now``, in the order they were added; their names."""
        ran = []
        for job in self.jobs:
            if now >= job.due:
                job.run()
                job.due = now + job.every_s
                ran.append(job.name)
        return ran
