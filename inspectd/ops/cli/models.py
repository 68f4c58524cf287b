"""``inspectd models``, ``eval``, ``explain``, ``promote``, ``rollback``: the registry's versions."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from inspectd.ops.cli.base import (
    EX_DATAERR,
    Obj,
    cli,
    engine_for,
    limits_for,
    station_model,
)


@cli.command()
@click.pass_obj
def models(obj: Obj) -> None:
    """List model versions in the registry; * marks the one this station runs."""
    from inspectd.core.registry import ModelRegistry
    from inspectd.model import active

    cfg = obj.config()
    registry = ModelRegistry(cfg.paths.models)
    wanted = active.wanted(cfg, engine_for(obj), registry)
    for meta in registry.list_versions():
        holdout = meta.metrics.get("holdout", {})
        summary = " ".join(
            f"{k}={holdout[k]:.3f}"
            for k in ("precision", "recall", "f1", "roc_auc")
            if isinstance(holdout.get(k), float)
        )
        mark = "*" if meta.version == wanted.version else " "
        click.echo(
            f"{mark} {meta.version}  {meta.created_at:%Y-%m-%d %H:%M}  input={meta.input_size[0]}x"
            f"{meta.input_size[1]}  threshold={meta.threshold:.3f}  {summary}"
        )
    click.echo(f"(* = {wanted.version}, from the {wanted.source})")


@cli.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="PNG to write")
@click.option("--version", "version", default=None, help="model version (default: this station's)")
@click.pass_obj
def explain(obj: Obj, file: Path, out: Path | None, version: str | None) -> None:
    """Write a PNG of FILE with the tile-score heatmap and the box where the symbol was found."""
    from inspectd.ops.explain import ExplainError, default_out
    from inspectd.ops.explain import explain as run_explain

    cfg = obj.config()
    target = out or default_out(cfg.paths.runs, file)
    model = station_model(obj, version)
    try:
        result = run_explain(file, model, limits_for(cfg), target)
    except ExplainError as exc:
        raise click.ClickException(str(exc)) from None
    box = "-" if result.box is None else "{},{} {}x{}".format(*result.box)
    click.echo(
        f"{result.verdict} (score {result.score:.3f}, threshold {result.threshold:.3f}, "
        f"{result.tiles} tiles, box {box}): {result.picture}"
    )


@cli.command("eval")
@click.argument("version", required=False)
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="a folder of labeled images (DATA/present/, DATA/absent/); default: the labeled holdout",
)
@click.pass_obj
def eval_command(obj: Obj, version: str | None, data: Path | None) -> None:
    """Evaluate a model version (default: the active one): report.json, plots and a summary."""
    from inspectd.model.runtime import ModelLoadError
    from inspectd.train.data.dataset import NotEnoughLabels
    from inspectd.train.evaluate.assess import evaluate_version
    from inspectd.train.evaluate.report import summary

    try:
        result, out = evaluate_version(obj.config(), engine_for(obj), version, data)
    except NotEnoughLabels as exc:
        click.echo(f"inspectd eval: {exc}", err=True)
        sys.exit(EX_DATAERR)
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(summary(result))
    click.echo(f"report: {out / 'report.json'}")


def _version_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from inspectd.core.registry import RegistryError, check_version

    try:
        return check_version(value)
    except RegistryError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.argument("version", callback=_version_name)
@click.option("--station", help="promote for this station only (default: every station)")
@click.pass_obj
def promote(obj: Obj, version: str, station: str | None) -> None:
    """Make VERSION the active model (running daemons switch within seconds).

    Recorded in the database, so every station that follows it (``[model] follow_database``) switches;
    with --station only that station does. VERSION is loaded first with every check the daemon runs
    (this station's [model] and [batch] settings): a version it would refuse is not promoted.
    """
    from inspectd.core import activations
    from inspectd.core.registry import ModelRegistry, RegistryError
    from inspectd.model import active

    cfg = obj.config()
    registry = ModelRegistry(cfg.paths.models)
    try:
        active.load(registry, version, cfg)  # refuse what the daemon would
    except active.ModelLoadError as exc:
        raise click.ClickException(f"not promoted: {exc}") from None
    engine = engine_for(obj)
    with registry.lock():
        if station is None or station == cfg.station.name:
            try:
                registry.activate(version, reason="promote")
            except RegistryError as exc:
                raise click.ClickException(f"not promoted: {exc}") from None
        activations.record(engine, version, station, "promote")
    click.echo(f"active model: {version} ({f'station {station}' if station else 'every station'})")


@cli.command()
@click.pass_obj
def rollback(obj: Obj) -> None:
    """Re-activate the model that was active before the current one (on every station), if the daemon
    would load it."""
    from inspectd.core import activations
    from inspectd.core.registry import ModelRegistry, RegistryError
    from inspectd.model import active

    cfg = obj.config()
    engine = engine_for(obj)
    registry = ModelRegistry(cfg.paths.models)
    with registry.lock():
        current = registry.active_version()
        try:
            version = registry.previous_version()
            active.load(registry, version, cfg)
        except RegistryError as exc:
            raise click.ClickException(str(exc)) from None
        except active.ModelLoadError as exc:
            raise click.ClickException(f"not rolled back: {exc}") from None
        registry.activate(version, reason=f"rollback from {current}")
        activations.record(engine, version, None, "rollback")
    click.echo(f"active model: {version}")
