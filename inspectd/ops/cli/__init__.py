"""The ``inspectd`` command line: one module per group of commands, all on one click group (base.py)."""

from inspectd.ops.cli import data, models, results, retrain, service
from inspectd.ops.cli.base import cli

__all__ = ["cli", "data", "main", "models", "results", "retrain", "service"]


def main() -> None:
    cli()
