"""Which model version a station runs, when several stations share one database and one registry.

Every promotion (``inspectd promote``, a retrain that passes its gate, ``inspectd rollback``) is recorded
in ``model_activations``: for every station (``station`` NULL) or for one. A station runs, in order:

1. ``[model] pin``, when set: this station stays on that version whatever is promoted elsewhere;
2. the latest activation recorded for it or for all stations (``[model] follow_database``);
3. the registry's own ``active`` pointer (a single station, or a database with no activation yet).
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, or_, select

from inspectd.core.config import ModelConfig
from inspectd.core.db import Activation
from inspectd.core.registry import ModelRegistry, check_version


@dataclass(frozen=True, slots=True)
class Wanted:
    version: str | None
    source: str  # "pin", "database" or "registry"


def record(engine: Engine, version: str, station: str | None, reason: str) -> None:
    check_version(version)  # RegistryError: never a path or a stray name in the promotions
    try:
        who = f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):  # no passwd entry (a DynamicUser service)
        who = socket.gethostname()
    with engine.begin() as conn:
        conn.execute(
            insert(Activation).values(
                version=version,
                station=station,
                activated_at=datetime.now(UTC),
                activated_by=who[:160],
                reason=reason,
            )
        )


def latest(engine: Engine, station: str) -> str | None:
    """The version most recently promoted for ``station`` or for every station; raises SQLAlchemyError."""
    query = (
        select(Activation.version)
        .where(or_(Activation.station == station, Activation.station.is_(None)))
        .order_by(Activation.id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        return conn.execute(query).scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class Active:
    """What decides which version runs, besides the configuration: the registry's pointer and the latest
    promotion recorded in the database for a station (or for all)."""

    registry: str | None
    database: str | None

    def changes_from(self, before: Active) -> str | None:
        """How the active version moved since ``before`` (None: it did not)."""
        moved = [
            f"{where} {old or '(none)'} -> {new or '(none)'}"
            for where, old, new in (
                ("registry pointer", before.registry, self.registry),
                ("database promotion", before.database, self.database),
            )
            if old != new
        ]
        return ", ".join(moved) or None


def active(engine: Engine, station: str, registry: ModelRegistry) -> Active:
    """The registry pointer and the latest promotion for ``station``; raises SQLAlchemyError."""
    return Active(registry.active_version(), latest(engine, station))


def wanted(cfg: ModelConfig, engine: Engine, station: str, registry: ModelRegistry) -> Wanted:
    """The version this station should run now; raises SQLAlchemyError when the database must be asked
    and cannot answer."""
    if cfg.pin:
        return Wanted(cfg.pin, "pin")
    if cfg.follow_database:
        version = latest(engine, station)
        if version is not None:
            return Wanted(version, "database")
    return Wanted(registry.active_version(), "registry")
