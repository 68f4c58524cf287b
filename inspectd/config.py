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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

EX_CONFIG = 78  # sysexits.h: configuration error; systemd's RestartPreventExitStatus names it.
DEFAULT_CONFIG = Path("config.toml")

PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationConfig(_Section):
    name: str = Field(default="station-1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class PathsConfig(_Section):
    incoming: Path = Path("var/incoming")
    processed: Path = Path("var/processed")
    quarantine: Path = Path("var/quarantine")
    models: Path = Path("var/models")
    labels: Path = Path("var/labels")
    runs: Path = Path("var/runs")


class DatabaseConfig(_Section):
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


class HttpConfig(_Section):
    listen: str = "127.0.0.1:9108"

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


class WatchConfig(_Section):
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


class DecodeConfig(_Section):
    max_pixels: int = Field(default=64_000_000, gt=0)
    max_file_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    workers: int = Field(default=0, ge=0)  # 0: one per CPU core, plus one
    # Bytes the decode stage holds at once (file contents and decoded frames, estimated from each
    # image's header before it is decoded): images wait their turn, one that needs more is refused.
    max_memory_mib: int = Field(default=768, ge=16)


class BatchConfig(_Section):
    max_size: int = Field(default=16, ge=1, le=1024)
    max_wait_ms: float = Field(default=20.0, ge=0)


TileReduce = Literal["max", "top2_mean"]  # a tiled image's score from its tiles' scores


class ModelConfig(_Section):
    threshold: float | None = Field(default=None, ge=0, le=1)  # None: the model version's own threshold
    # Inference threads; 0: one per CPU core. One by default: the decode workers already keep every core
    # busy, and a second interpreter thread only adds its wake-ups (burst 0.82 -> 0.86 of the ceiling).
    num_threads: int = Field(default=1, ge=0)
    # Which version to run: ``pin`` (this station only) wins; else the latest promotion recorded in the
    # database for this station or for all (when follow_database); else the registry's own pointer.
    pin: str | None = Field(default=None, min_length=1, max_length=64)
    follow_database: bool = True
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


class ClusterConfig(_Section):
    """Several daemons on one incoming folder (one PostgreSQL): each file is claimed by exactly one."""

    shared_incoming: bool = False
    lease_s: float = Field(default=60.0, ge=1.0)  # a crashed worker's claims are taken over after this


class AugmentConfig(_Section):
    """Random transforms of training images only (0 disables one).

    The geometric ones (rotation, scale, shear, translation) are applied at the source resolution, before
    the frame is reduced to the model's input: ``source_copies`` transformed copies of each training
    frame join the training set (inspectd/train/geometry.py). After the resize they would smear a thin
    mark's lines (at 128 px the bundled mark's lines are under a pixel wide). The others (brightness,
    contrast, blur, noise, flips) run in the training pipeline, for networks trained on images.
    """

    rotation_deg: float = Field(default=15.0, ge=0, le=180)
    scale: float = Field(default=0.15, ge=0, lt=1)
    shear_deg: float = Field(default=5.0, ge=0, le=45)
    translate: float = Field(default=0.0, ge=0, lt=0.5)
    source_copies: int = Field(default=1, ge=0, le=8)  # transformed copies of each training frame
    brightness: float = Field(default=0.15, ge=0, le=1)
    contrast: float = Field(default=0.2, ge=0, le=1)
    blur_sigma: float = Field(default=0.0, ge=0, le=5)
    noise_std: float = Field(default=0.01, ge=0, le=0.5)
    flip: bool = True  # mirror images; turn off when the symbol is not mirror-symmetric


class SymbolConfig(_Section):
    """Synthetic positives from the mark's artwork (``retrain --symbol ART``; inspectd/train/composite.py):
    drawn into labeled absent training images, never into validation, holdout or gate images."""

    artwork: Path | None = None  # an image of the mark (alpha, or dark on light / light on dark)
    count: int = Field(default=2000, ge=1, le=100_000)  # synthetic positives per retrain
    # the mark's longer side, as fractions of the frame's (or the ROI's) shorter side
    size: tuple[float, float] = (0.06, 0.25)
    rotation_deg: float = Field(default=25.0, ge=0, le=180)
    shear_deg: float = Field(default=10.0, ge=0, le=45)
    aspect: float = Field(default=0.15, ge=0, le=1)  # width/height stretched by up to this fraction
    stroke: float = Field(default=0.5, ge=0, le=3)  # strokes thicker/thinner by up to this px per 16 px
    blur_sigma: float = Field(default=1.2, ge=0, le=5)
    contrast: tuple[float, float] = (0.12, 0.5)  # ink against its background, fractions of full scale
    dark_share: float = Field(default=0.5, ge=0, le=1)  # marks darker than their background (polarity)
    opacity: float = Field(default=0.8, gt=0, le=1)  # the least opacity (the background shows through)
    occlusion: float = Field(default=0.15, ge=0, le=1)  # share of marks with a corner hidden
    noise: float = Field(default=0.03, ge=0, le=0.5)  # noise on the ink, fractions of full scale

    @field_validator("size", "contrast")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError("must be [low, high] with 0 < low <= high <= 1")
        return value


class GateConfig(_Section):
    """A candidate is promoted only if, on the same holdout, it loses no more than this."""

    max_recall_drop: float = Field(default=0.0, ge=0, le=1)
    max_roc_auc_drop: float = Field(default=0.005, ge=0, le=1)


class RetrainConfig(_Section):
    backbone: Literal[
        "small_cnn",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "resnet50",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    ] = "efficientnet_lite0"
    pretrained: bool = True  # ImageNet weights for the pretrained backbones (from weights, else download)
    weights: dict[
        str, Path
    ] = {}  # backbone -> local ImageNet weights file (.weights.h5), for offline machines
    # network input, pixels per side; 0: chosen from the labeled images (their median side, at most
    # AUTO_INPUT_MAX: frames that small are seen at their own resolution, larger ones resized to it)
    input_size: int = Field(default=0, ge=0, le=512)
    # "global": features pooled over the frame, then one dense logit; "mil": a fully-convolutional network
    # scoring every place of the frame, the frame's logit the highest place's (multiple-instance learning
    # from image-level labels: no boxes needed; see inspectd/train/model.py)
    head: Literal["global", "mil"] = "mil"
    # Tiled training: tiles of this many frame pixels (resized to input_size), the daemon cutting frames
    # the same way for this version; None trains on whole frames (or the ROI) resized to input_size.
    tile: int | None = Field(default=None, ge=8)
    tile_overlap: float = Field(default=0.25, ge=0, lt=1)
    epochs: int = Field(default=30, ge=1)
    # pretrained backbones: a second phase with the top layers unfrozen; None: 10 with the global head, 0
    # with the MIL head (whose first phase trains on feature maps computed once: fine-tuning would run the
    # backbone over every image in every epoch)
    fine_tune_epochs: int | None = Field(default=None, ge=0)
    # a MIL head on a frozen backbone: a second round on the absent frames scored highest (0: none)
    hard_negative_epochs: int = Field(default=0, ge=0)
    fine_tune_layers: int = Field(default=30, ge=0)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    fine_tune_learning_rate: float = Field(default=1e-5, gt=0)
    patience: int = Field(default=6, ge=1)
    # epochs before early stopping or the learning-rate schedule may act: a MIL head can take several
    # epochs at chance before it finds the mark (measured: found at epoch 6-8 of 19, or never when stopped
    # at epoch 13 after a best at 7)
    min_epochs: int = Field(default=12, ge=0)
    min_per_class: int = Field(default=20, ge=2)
    holdout_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    validation_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    seed: int = 1234
    threshold_policy: Literal["best_f1", "target_recall"] = "best_f1"
    target_recall: float = Field(default=0.95, gt=0, le=1)
    # The network the daemon runs: int8 weights and activations (about 3x less CPU per image than float),
    # dynamic (int8 weights), or none (float). A quantized network that loses validation ROC-AUC is
    # refused and the float one ships instead (inspectd/train/export.py).
    quantize: Literal["none", "dynamic", "int8"] = "int8"
    augment: AugmentConfig = AugmentConfig()
    symbol: SymbolConfig = SymbolConfig()
    gate: GateConfig = GateConfig()

    @property
    def fine_tune(self) -> int:
        """Epochs of the second phase (``fine_tune_epochs`` resolved)."""
        if self.fine_tune_epochs is not None:
            return self.fine_tune_epochs
        return 0 if self.head == "mil" else 10

    @field_validator("input_size")
    @classmethod
    def _input_size(cls, value: int) -> int:
        if 0 < value < 32:
            raise ValueError("must be 0 (chosen from the images) or at least 32")
        return value


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ShutdownConfig(_Section):
    drain_timeout_s: PositiveFloat = 20.0


class SystemdConfig(_Section):
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
    return config.model_copy(update={"paths": paths, "database": database, "retrain": retrain})
