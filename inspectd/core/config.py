"""Configuration: one strict tree, validated once at start.

Sources, highest priority first: environment variables ``INSPECTD_<SECTION>__<KEY>``, then the TOML file
(``--config PATH``, else ``$INSPECTD_CONFIG``, else ``./config.toml``), then the defaults below. Unknown
keys are rejected. Relative paths (and a relative SQLite database path) are resolved against the directory
of the config file, so the daemon behaves the same whatever its working directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from inspectd.core.mqtt_config import MqttConfig
from inspectd.core.retrain_config import RetrainConfig, Section

EX_CONFIG = 78  # sysexits.h: configuration error; systemd's RestartPreventExitStatus names it.
DEFAULT_CONFIG = Path("config.toml")

PositiveFloat = Annotated[float, Field(gt=0)]


class StationConfig(Section):
    name: str = Field(default="station-1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class PathsConfig(Section):
    incoming: Path = Path("var/incoming")
    processed: Path = Path("var/processed")
    quarantine: Path = Path("var/quarantine")
    models: Path = Path("var/models")
    labels: Path = Path("var/labels")
    runs: Path = Path("var/runs")


class DatabaseConfig(Section):
    url: str = "sqlite:///var/inspectd.db"
    busy_timeout_s: PositiveFloat = 10.0
    retry_initial_s: PositiveFloat = 0.5
    retry_max_s: PositiveFloat = 30.0

    @field_validator("url")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from None
        return value


_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")  # "_": /etc/hosts names have them


def split_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port); ValueError with a message naming what is wrong.

    Checked without DNS: an IP literal must be a valid address, anything else a syntactically valid host
    name (whether it resolves is only known when the daemon binds it).
    """
    if value.startswith("["):
        inner, sep, port = value[1:].partition("]:")
        if not sep or not inner:
            raise ValueError("expected [IPV6]:PORT, e.g. [::1]:9108")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"not an IPv6 address: {inner!r}") from None
        host = inner
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9108")
        if ":" in host:
            raise ValueError(f"an IPv6 address needs brackets: [{host}]:{port}")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"not an IPv4 address: {host!r}") from None
        elif len(host) > 253 or not all(map(_HOSTNAME_LABEL.match, host.removesuffix(".").split("."))):
            raise ValueError(f"not a valid host name: {host!r}")
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port from 0 to 65535, got {port!r}")
    return host, int(port)


class HttpConfig(Section):
    listen: str = "127.0.0.1:9108"
    # a file whose first line is the token API clients send (Authorization: Bearer TOKEN); required
    # for reading results when ``listen`` is not a loopback address
    token_file: Path | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_listen(value)
        return value

    @property
    def host(self) -> str:
        """The address to bind, without the brackets of an IPv6 literal (``[::1]:9108`` -> ``::1``)."""
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def loopback(self) -> bool:
        """Only this machine can connect (127.0.0.0/8, ::1, localhost)."""
        host = self.host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


class WatchConfig(Section):
    observer: Literal["inotify", "polling"] = "inotify"
    poll_interval_s: PositiveFloat = 1.0
    settle_s: PositiveFloat = 0.3
    stale_s: PositiveFloat = 60.0
    rescan_interval_s: PositiveFloat = 30.0
    extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
    ignore: tuple[str, ...] = (".*", "*.part", "*.tmp", "*.partial", "*~")

    @field_validator("extensions")
    @classmethod
    def _lower_dotted(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one extension is needed")
        return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in value)


class DecodeConfig(Section):
    max_pixels: int = Field(default=64_000_000, gt=0)
    max_file_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    workers: int = Field(default=0, ge=0)  # 0: one per CPU core, plus one
    # Bytes the decode stage holds at once (file contents and decoded frames, estimated from each
    # image's header before it is decoded): images wait their turn, one that needs more is refused.
    max_memory_mib: int = Field(default=768, ge=16)


class BatchConfig(Section):
    max_size: int = Field(default=16, ge=1, le=1024)
    max_wait_ms: float = Field(default=20.0, ge=0)


TileReduce = Literal["max", "top2_mean"]  # a tiled image's score from its tiles' scores
# which of a quantized version's two networks runs: the faster on this CPU (measured at load), the
# quantized one it ships, or its float one (model/choice.py)
NetworkChoice = Literal["fastest", "shipped", "float"]


class ModelConfig(Section):
    threshold: float | None = Field(default=None, ge=0, le=1)  # None: the model version's own threshold
    # Inference threads; 0: one per CPU core. One by default: the decode workers already keep every core
    # busy, and a second interpreter thread only adds its wake-ups (burst 0.82 -> 0.86 of the ceiling).
    num_threads: int = Field(default=1, ge=0)
    network: NetworkChoice = "fastest"
    # Which version to run: ``pin`` (this station only) wins; else the latest promotion recorded in the
    # database for this station or for all (when follow_database); else the registry's own pointer.
    pin: str | None = Field(default=None, min_length=1, max_length=64)
    follow_database: bool = True
    # how often the model-quality gauges (labels, score and input drift) are recomputed from the database
    quality_refresh_s: PositiveFloat = 60.0
    # x, y, w, h of the area the symbol can be in: pixels, or fractions of the frame when all are <= 1
    roi: tuple[float, float, float, float] | None = None
    # Tiles of this many frame pixels, each resized to the model's input: overrides the version's own
    # tiling (a whole-frame model on large frames: tiles at the scale its training frames had)
    tile: int | None = Field(default=None, ge=8)
    tile_overlap: float | None = Field(default=None, ge=0, lt=1)  # None: the version's, else 0.25
    tile_reduce: TileReduce = "max"  # tiled: the image score from the tile scores

    @field_validator("roi")
    @classmethod
    def _roi(cls, value: tuple[float, float, float, float] | None) -> tuple[float, ...] | None:
        if value is None:
            return value
        x, y, w, h = value
        if x < 0 or y < 0 or w <= 0 or h <= 0:
            raise ValueError("expected [x, y, w, h] with x, y >= 0 and w, h > 0")
        if max(value) <= 1.0 and (x + w > 1.0 or y + h > 1.0):
            raise ValueError("as fractions of the frame, x + w and y + h must be at most 1")
        return value


class ClusterConfig(Section):
    """Several daemons on one incoming folder (one PostgreSQL): each file is claimed by exactly one."""

    shared_incoming: bool = False
    lease_s: float = Field(default=60.0, ge=1.0)  # a crashed worker's claims are taken over after this


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ShutdownConfig(Section):
    drain_timeout_s: PositiveFloat = 20.0


class SystemdConfig(Section):
    stall_after_s: PositiveFloat = 30.0  # no pipeline progress for this long: stop the watchdog pings


class Config(BaseSettings):
    """The whole configuration tree (see config.toml for every key, commented)."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix="INSPECTD_", env_nested_delimiter="__", case_sensitive=False
    )

    station: StationConfig = StationConfig()
    paths: PathsConfig = PathsConfig()
    database: DatabaseConfig = DatabaseConfig()
    http: HttpConfig = HttpConfig()
    watch: WatchConfig = WatchConfig()
    decode: DecodeConfig = DecodeConfig()
    batch: BatchConfig = BatchConfig()
    model: ModelConfig = ModelConfig()
    cluster: ClusterConfig = ClusterConfig()
    log: LogConfig = LogConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    systemd: SystemdConfig = SystemdConfig()
    mqtt: MqttConfig = MqttConfig()
    retrain: RetrainConfig = RetrainConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file's contents, which arrive as init arguments.
        return (env_settings, init_settings)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the offending keys."""


def _format_validation(source: str, exc: ValidationError) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def config_path(explicit: Path | None) -> tuple[Path, bool]:
    """The config file to read, and whether the user asked for it by name (then it must exist)."""
    if explicit is not None:
        return explicit, True
    env = os.environ.get("INSPECTD_CONFIG")
    if env:
        return Path(env), True
    return DEFAULT_CONFIG, False


def load_config(explicit: Path | None = None) -> Config:
    path, required = config_path(explicit)
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    elif required:
        raise ConfigError(f"{path}: no such config file")
    try:
        config = Config(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(str(path), exc)) from None
    return resolve_relative(config, path.resolve().parent)


def resolve_relative(config: Config, base: Path) -> Config:
    paths = config.paths.model_copy(
        update={name: base / value for name, value in config.paths if not Path(value).is_absolute()}
    )
    url = make_url(config.database.url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        db_path = Path(url.database or "")
        if not db_path.is_absolute():
            url = url.set(database=str(base / db_path))
    weights = {name: p if p.is_absolute() else base / p for name, p in config.retrain.weights.items()}
    retrain = config.retrain.model_copy(update={"weights": weights})
    database = config.database.model_copy(update={"url": url.render_as_string(hide_password=False)})
    mqtt = config.mqtt.model_copy(
        update={k: p if p.is_absolute() else base / p for k, p in config.mqtt.paths().items()}
    )
    token = config.http.token_file
    http = config.http.model_copy(
        update={"token_file": token if token is None or token.is_absolute() else base / token}
    )
    update = {"paths": paths, "database": database, "retrain": retrain, "mqtt": mqtt, "http": http}
    return config.model_copy(update=update)
