"""``inspectd run``, ``serve``, ``check-config``, ``db upgrade|status``: the service and its database."""

from __future__ import annotations

import json
import sys

import click
from sqlalchemy.exc import SQLAlchemyError

from inspectd.ops.cli.base import (
    Obj,
    cli,
)


@cli.command()
@click.pass_obj
def run(obj: Obj) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    from inspectd.daemon.lifecycle import Daemon

    sys.exit(Daemon(obj.config()).run())


@cli.command()
@click.pass_obj
def serve(obj: Obj) -> None:
    """Serve the results API on [http] listen, without a daemon, until SIGTERM/SIGINT."""
    from inspectd.web.serve import serve as run_server

    sys.exit(run_server(obj.config()))


@cli.command("check-config")
@click.pass_obj
def check_config(obj: Obj) -> None:
    """Validate the configuration and print it, resolved, as JSON."""
    click.echo(json.dumps(obj.config().model_dump(mode="json"), indent=2))


@cli.group("db")
def db_group() -> None:
    """Database schema management."""


@db_group.command("upgrade")
@click.pass_obj
def db_upgrade(obj: Obj) -> None:
    """Bring the database to the latest schema (safe to repeat)."""
    from inspectd.core import db

    engine = db.make_engine(obj.config().database.url, obj.config().database.busy_timeout_s)
    try:
        db.upgrade(engine)
        current, head = db.schema_state(engine)
    except SQLAlchemyError as exc:
        raise click.ClickException(f"database error: {exc}") from None
    click.echo(f"database at revision {current} (head {head})")


@db_group.command("status")
@click.pass_obj
def db_status(obj: Obj) -> None:
    """Show the database's schema revision; exit 1 if it is not the one this inspectd needs."""
    from inspectd.core import db

    engine = db.make_engine(obj.config().database.url, obj.config().database.busy_timeout_s)
    current, head = db.schema_state(engine)
    click.echo(f"current: {current or '(empty)'}\nhead:    {head}")
    if current != head:
        sys.exit(1)
