"""``inspectd retrain``: train a version from the labels and promote it only if it is no worse."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from inspectd.core.config import Config
from inspectd.core.retrain_status import Outcome as RetrainOutcome
from inspectd.ops.cli.base import (
    BACKBONES,
    EX_DATAERR,
    EX_TEMPFAIL,
    QUANTIZE,
    Obj,
    cli,
    engine_for,
)

Status = tuple[RetrainOutcome, str, str | None]  # outcome, detail, version


@cli.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="an extra folder of labeled images: DATA/present/ and DATA/absent/",
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="override retrain.epochs")
@click.option(
    "--backbone",
    type=click.Choice(BACKBONES),
    default=None,
    help="override retrain.backbone",
)
@click.option(
    "--input-size",
    type=click.IntRange(min=0, max=512),
    default=None,
    help="override retrain.input_size (0: chosen from the images)",
)
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZE),
    default=None,
    help="override retrain.quantize",
)
@click.option(
    "--head",
    type=click.Choice(["global", "mil"]),
    default=None,
    help="override retrain.head (mil: score every place of the frame, the frame's score the best place's)",
)
@click.option(
    "--symbol",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="the mark's artwork (an image): composited into labeled absent images as more positives "
    "(override retrain.symbol.artwork)",
)
@click.option("--force", is_flag=True, help="activate the new version even if the gate refuses it")
@click.pass_obj
def retrain(
    obj: Obj,
    data: Path | None,
    epochs: int | None,
    backbone: str | None,
    input_size: int | None,
    quantize: str | None,
    head: str | None,
    symbol: Path | None,
    force: bool,
) -> None:
    """Train a new model version from the labeled images; promote it only if it is no worse."""
    if input_size is not None and 0 < input_size < 32:
        raise click.BadParameter("0 (chosen from the images) or 32 to 512", param_hint="--input-size")
    from inspectd.core import retrain_status

    cfg = obj.config()
    status: Status = ("failed", "stopped before the end (an unexpected error, or interrupted)", None)
    try:
        overrides = {
            "epochs": epochs,
            "backbone": backbone,
            "input_size": input_size,
            "quantize": quantize,
            "head": head,
            "symbol": symbol,
        }
        status, code = _retrain(obj, cfg, data, force, overrides)
    except click.ClickException as exc:
        status = ("failed", exc.message, None)
        raise
    finally:
        retrain_status.write(cfg.paths.runs, *status)
    if code:
        sys.exit(code)


def _retrain(
    obj: Obj, cfg: Config, data: Path | None, force: bool, overrides: dict[str, Any]
) -> tuple[Status, int]:
    """The retrain, and how it ended: (status, exit code): each failure mapped to its exit code."""
    from inspectd.model.runtime import ModelLoadError
    from inspectd.train.data.composite import ArtworkError
    from inspectd.train.data.dataset import NotEnoughLabels
    from inspectd.train.nets.backbones import WeightsUnavailable
    from inspectd.train.retrain import retrain as run_retrain

    try:
        outcome = run_retrain(cfg, engine_for(obj), data, force, overrides)
    except (NotEnoughLabels, ArtworkError) as exc:
        click.echo(f"inspectd retrain: {exc}", err=True)
        return ("failed", str(exc), None), EX_DATAERR
    except WeightsUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except ModelLoadError as exc:  # the new version would be refused by the daemon: nothing installed
        raise click.ClickException(f"retrain: the new version cannot be used: {exc}") from None
    from inspectd.train.evaluate.report import summary

    click.echo(summary(outcome.candidate))
    if outcome.active is not None:
        click.echo(summary(outcome.active))
    verdict = "PROMOTED" if outcome.promoted else "NOT PROMOTED"
    click.echo(
        f"{verdict}: {outcome.version}. {outcome.decision}\nreports and TensorBoard logs: {outcome.run_dir}"
    )
    if outcome.superseded is not None:
        click.echo(
            f"inspectd retrain: {outcome.version} installed, not activated: the active model changed during "
            f"the retrain ({outcome.superseded}); promote it with `inspectd promote {outcome.version}`",
            err=True,
        )
        return ("superseded", outcome.decision, outcome.version), EX_TEMPFAIL
    return ("promoted" if outcome.promoted else "refused", outcome.decision, outcome.version), 0
