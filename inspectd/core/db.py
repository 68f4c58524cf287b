"""Database schema, engine and migration state (SQLite embedded, PostgreSQL for several stations)."""

from __future__ import annotations

from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
    TimeoutError,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
RowId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Result(Base):
    """One row per distinct image content: its verdict, or the reason it could not be classified."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    original_name: Mapped[str] = mapped_column(Text)
    stored_path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    latency_s: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(64))
    threshold: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    verdict: Mapped[str | None] = mapped_column(String(8), index=True)
    status: Mapped[str] = mapped_column(String(8), index=True)
    error_reason: Mapped[str | None] = mapped_column(Text)
    station: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str | None] = mapped_column(String(8))
    labeled_by: Mapped[str | None] = mapped_column(String(128))
    labeled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    # tiled models: the best tile, where the symbol was found (frame pixels)
    box_x: Mapped[int | None] = mapped_column(Integer)
    box_y: Mapped[int | None] = mapped_column(Integer)
    box_w: Mapped[int | None] = mapped_column(Integer)
    box_h: Mapped[int | None] = mapped_column(Integer)
    label_box: Mapped[str | None] = mapped_column(String(64))  # "x,y,w,h": where a human saw the symbol
    # what the model saw: the mean and standard deviation of its inputs (0-1), for the input-drift gauges
    brightness: Mapped[float | None] = mapped_column(Float)
    contrast: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        CheckConstraint("verdict IN ('present', 'absent')", name="verdict"),
        CheckConstraint("status IN ('ok', 'error')", name="status"),
        CheckConstraint("label IN ('present', 'absent')", name="label"),
        CheckConstraint(
            "(status = 'ok' AND verdict IS NOT NULL AND score IS NOT NULL)"
            " OR (status = 'error' AND error_reason IS NOT NULL)",
            name="status_fields",
        ),
        Index("ix_results_station_processed_at", "station", "processed_at"),
    )


class Example(Base):
    """A labeled image that has no result row: sorted into a label folder, or imported from a CSV."""

    __tablename__ = "examples"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(16))
    box: Mapped[str | None] = mapped_column(String(64))  # "x,y,w,h": where the symbol is, when known
    labeled_by: Mapped[str | None] = mapped_column(String(128))
    labeled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("label IN ('present', 'absent')", name="label"),
        CheckConstraint("source IN ('folder', 'import')", name="source"),
    )


class Claim(Base):
    """Work in progress on a shared incoming folder: the worker that holds an image, until its lease ends.

    A row lives from the claim until the image's result is committed (deleted in the same transaction);
    a crashed worker's rows stay until ``lease_until`` passes, and then another worker takes them over.
    """

    __tablename__ = "claims"

    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    worker: Mapped[str] = mapped_column(String(160))
    station: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    claimed_at: Mapped[float] = mapped_column(Float)  # seconds since the epoch, the database's clock
    lease_until: Mapped[float] = mapped_column(Float, index=True)
    taken_over: Mapped[bool] = mapped_column(Boolean)  # the last claim took it from another worker


class Outbox(Base):
    """A committed result not yet acknowledged by the MQTT broker (``[mqtt]``): written in the transaction
    that commits the result, deleted once the broker acknowledged its message (QoS 1). What survives a
    crash or an outage is re-sent: delivery is at least once, the content hash is the message's identity."""

    __tablename__ = "outbox"

    result_id: Mapped[int] = mapped_column(
        RowId, ForeignKey("results.id", ondelete="CASCADE"), primary_key=True
    )
    station: Mapped[str] = mapped_column(String(64), index=True)  # the station that publishes it
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Activation(Base):
    """A model promotion: every station (``station`` NULL) or one station switches to ``version``."""

    __tablename__ = "model_activations"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64))
    station: Mapped[str | None] = mapped_column(String(64), index=True)
    activated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    activated_by: Mapped[str] = mapped_column(String(160))
    reason: Mapped[str] = mapped_column(Text)


def _sqlite_pragmas(busy_timeout_s: float) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


def make_engine(url: str, busy_timeout_s: float = 10.0) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": busy_timeout_s})
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout_s))
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=2, max_overflow=2)


# --- migrations -------------------------------------------------------------------------------------


def migrations_dir() -> Path:
    """The Alembic scripts: inside the installed wheel, or the repository's top-level folder."""
    packaged = Path(str(files("inspectd"))) / "migrations"
    if (packaged / "env.py").is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    cfg.attributes["engine"] = engine
    return cfg


def result_columns() -> tuple[str, ...]:
    """Every column of ``results``, in table order: what ``inspectd results`` exports (never a hand copy)."""
    return tuple(Result.__table__.columns.keys())


def transient(exc: SQLAlchemyError) -> bool:
    """An error a retry can mend: the database unreachable, restarting, locked or out of connections.
    A constraint violation, a value the column cannot hold or a statement it cannot run is permanent."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def brief(exc: BaseException) -> str:
    """A database error in one line for the log: the driver's own message, without SQLAlchemy's
    statement and parameter dump."""
    return str(exc.__cause__ or exc).splitlines()[0]


class SchemaMismatch(Exception):
    """The database is not at the revision this version of inspectd was built for."""


def schema_state(engine: Engine) -> tuple[str | None, str]:
    """(the database's current revision, the code's head revision)."""
    script = ScriptDirectory.from_config(alembic_config(engine))
    head = script.get_current_head()
    assert head is not None, "no migration scripts found"
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, head


def require_current_schema(engine: Engine) -> str:
    current, head = schema_state(engine)
    if current == head:
        return head
    script = ScriptDirectory.from_config(alembic_config(engine))
    known = {rev.revision for rev in script.walk_revisions()}
    where = engine.url.render_as_string(hide_password=True)
    if current is not None and current not in known:
        raise SchemaMismatch(
            f"database {where} is at revision {current}, newer than this inspectd understands "
            f"(head {head}); upgrade inspectd on this station"
        )
    raise SchemaMismatch(
        f"database {where} is at revision {current or '(empty)'}, this inspectd needs {head}; "
        "run: inspectd db upgrade"
    )


def upgrade(engine: Engine) -> None:
    from alembic import command

    command.upgrade(alembic_config(engine), "head")
