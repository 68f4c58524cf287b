"""Alembic environment: run by `inspectd db upgrade` (the engine is handed over in config.attributes)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, text

from inspectd.core.db import Base, make_engine

config = context.config
target_metadata = Base.metadata

# Several stations may run `inspectd db upgrade` at once against one PostgreSQL: the first takes this
# transaction-level advisory lock and migrates; the others wait for it, then find the schema current.
ADVISORY_LOCK_KEY = 0x1A5EC7D  # "inspectd", any constant shared by every version of the program


def run_migrations_online() -> None:
    engine: Engine | None = config.attributes.get("engine")
    if engine is None:  # plain `alembic` command line: build one from the URL
        engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; use `inspectd db upgrade`")
run_migrations_online()
