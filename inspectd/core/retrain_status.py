"""How the last ``inspectd retrain`` ended, in ``<paths.runs>/last-retrain.json``: written by the command
on every way out, read by the daemon for ``inspectd_retrain_last`` (and the alert on a retrain that
failed or was refused). The daemon never imports the training code: this file is the whole interface."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

STATUS_FILE = "last-retrain.json"
Outcome = Literal["promoted", "refused", "superseded", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("promoted", "refused", "superseded", "failed")


def write(runs: Path, outcome: Outcome, detail: str, version: str | None = None) -> None:
    """Atomically (a reader never sees half a file)."""
    runs.mkdir(parents=True, exist_ok=True)
    record = {"outcome": outcome, "detail": detail[:500], "version": version, "finished_at": time.time()}
    fd, tmp = tempfile.mkstemp(dir=runs, prefix=".last-retrain-")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh)
    Path(tmp).replace(runs / STATUS_FILE)


def read(runs: Path) -> dict[str, Any] | None:
    """The last status, or None when there is none (or it cannot be read)."""
    try:
        record = json.loads((runs / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("outcome") not in OUTCOMES:
        return None
    return record
