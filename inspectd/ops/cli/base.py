"""The command group, its shared options and what several commands need: the config, the database,
the decode limits, the station's model."""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any

import click

from inspectd import __version__
from inspectd.core import logs
from inspectd.core.config import EX_CONFIG, Config, ConfigError, load_config
from inspectd.core.registry import Quantize
from inspectd.core.retrain_config import Backbone

BACKBONES = typing.get_args(Backbone)
QUANTIZE = typing.get_args(Quantize)


class Obj:
    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None

    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                click.echo(f"inspectd: {exc}", err=True)
                sys.exit(EX_CONFIG)
            logs.configure(self._config.log.level, self._config.log.format)
        return self._config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="config file (default: $INSPECTD_CONFIG, else ./config.toml)",
)
@click.version_option(__version__, prog_name="inspectd")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """inspectd: watch a folder of images, classify each, record every result."""
    ctx.obj = Obj(config_path)


EX_DATAERR = 65  # sysexits.h: the input data (labels) cannot be used
EX_TEMPFAIL = 75  # sysexits.h: not done now (retrain: the active model changed during the run)


def engine_for(obj: Obj) -> Any:
    from inspectd.core import db

    cfg = obj.config()
    engine = db.make_engine(cfg.database.url, cfg.database.busy_timeout_s)
    try:
        db.require_current_schema(engine)
    except db.SchemaMismatch as exc:
        raise click.ClickException(str(exc)) from None
    return engine


def limits_for(cfg: Config) -> Any:
    from inspectd.daemon.intake.decode import DecodeLimits, install_pixel_limit

    install_pixel_limit(cfg.decode.max_pixels)
    return DecodeLimits(cfg.decode.max_pixels, cfg.decode.max_file_bytes)


def station_model(obj: Obj, version: str | None = None) -> Any:
    """The model this station runs (or ``version``), loaded as the daemon loads it."""
    from inspectd.core.registry import ModelRegistry, RegistryError
    from inspectd.model import active

    cfg = obj.config()
    try:
        return active.resolve(cfg, engine_for(obj), ModelRegistry(cfg.paths.models), version)
    except (active.ModelLoadError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from None
