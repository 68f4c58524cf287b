"""The program's entry point: catch early signals (signals.py) before the heavy imports, then run."""

from __future__ import annotations

import sys


def main() -> None:
    if "run" in sys.argv[1:]:
        from inspectd.daemon import signals

        signals.catch_early()
    from inspectd.ops.cli import main as cli_main

    cli_main()
