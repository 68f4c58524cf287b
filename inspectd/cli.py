"""The ``inspectd`` command line."""

from __future__ import annotations

import csv
import json
import re
import sys
import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from inspectd import __version__, logs
from inspectd.config import EX_CONFIG, Config, ConfigError, RetrainConfig, load_config

BACKBONES = typing.get_args(RetrainConfig.model_fields["backbone"].annotation)
TABLE_FIELDS = (
    "id",
    "processed_at",
    "original_name",
    "status",
    "verdict",
    "score",
    "model_version",
    "box",
    "error_reason",
)


class _Obj:
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
    ctx.obj = _Obj(config_path)


@cli.command()
@click.pass_obj
def run(obj: _Obj) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    from inspectd.daemon import Daemon

    sys.exit(Daemon(obj.config()).run())


@cli.command("check-config")
@click.pass_obj
def check_config(obj: _Obj) -> None:
    """Validate the configuration and print it, resolved, as JSON."""
    click.echo(json.dumps(obj.config().model_dump(mode="json"), indent=2))


@cli.group("db")
def db_group() -> None:
    """Database schema management."""


@db_group.command("upgrade")
@click.pass_obj
def db_upgrade(obj: _Obj) -> None:
    """Bring the database to the latest schema (safe to repeat)."""
    from inspectd import db

    engine = db.make_engine(obj.config().database.url, obj.config().database.busy_timeout_s)
    try:
        db.upgrade(engine)
        current, head = db.schema_state(engine)
    except SQLAlchemyError as exc:
        raise click.ClickException(f"database error: {exc}") from None
    click.echo(f"database at revision {current} (head {head})")


@db_group.command("status")
@click.pass_obj
def db_status(obj: _Obj) -> None:
    """Show the database's schema revision; exit 1 if it is not the one this inspectd needs."""
    from inspectd import db

    engine = db.make_engine(obj.config().database.url, obj.config().database.busy_timeout_s)
    current, head = db.schema_state(engine)
    click.echo(f"current: {current or '(empty)'}\nhead:    {head}")
    if current != head:
        sys.exit(1)


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str) -> datetime:
    match = _RELATIVE.match(value.strip())
    if match:
        return datetime.now(UTC) - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use an ISO date/time (2026-11-23T08:00) or an age (30m, 2h, 7d)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return value


@cli.command()
@click.option("--since", help="only results processed since then: ISO time or age (30m, 2h, 7d)")
@click.option("--verdict", type=click.Choice(["present", "absent"]))
@click.option("--status", type=click.Choice(["ok", "error"]))
@click.option("--station", help="only results from this station")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="at most this many (newest first)")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]), default="table")
@click.pass_obj
def results(
    obj: _Obj,
    since: str | None,
    verdict: str | None,
    status: str | None,
    station: str | None,
    limit: int | None,
    fmt: str,
) -> None:
    """List recorded results (one JSON object per line with --format jsonl)."""
    from inspectd import db
    from inspectd.db import Result

    fields = db.result_columns()
    cfg = obj.config()
    engine = db.make_engine(cfg.database.url, cfg.database.busy_timeout_s)
    query = select(*(getattr(Result, f) for f in fields)).order_by(Result.id.desc())
    if since:
        query = query.where(Result.processed_at >= parse_since(since))
    if verdict:
        query = query.where(Result.verdict == verdict)
    if status:
        query = query.where(Result.status == status)
    if station:
        query = query.where(Result.station == station)
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        rows = [dict(zip(fields, (_plain(v) for v in row), strict=True)) for row in conn.execute(query)]
    rows.reverse()
    out = sys.stdout
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row) + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    else:
        _table(rows, out)


def _table(rows: list[dict[str, Any]], out: Any) -> None:
    def cell(field: str, value: Any) -> str:
        if value is None:
            return "-"
        if field == "score":
            return f"{value:.3f}"
        if field == "processed_at":
            return str(value)[:19].replace("T", " ")
        return str(value).replace("\n", "\\n")

    for row in rows:
        corner = row["box_x"], row["box_y"], row["box_w"], row["box_h"]
        row["box"] = None if corner[0] is None else "{},{} {}x{}".format(*corner)
    table = [list(TABLE_FIELDS)] + [[cell(f, row[f]) for f in TABLE_FIELDS] for row in rows]
    widths = [min(max(len(r[i]) for r in table), 48) for i in range(len(TABLE_FIELDS))]
    for r in table:
        out.write("  ".join(c[:w].ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
    out.write(f"({len(rows)} results)\n")


@cli.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", default="640x512", show_default=True, help="WIDTHxHEIGHT")
@click.option("--present-ratio", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option(
    "--format", "fmt", type=click.Choice(["png", "jpg", "bmp", "tif"]), default="png", show_default=True
)
@click.option("--mark-size", default=None, help="MIN-MAX mark diameter in px (default: scaled to the size)")
@click.option("--flat", is_flag=True, help="all images in OUT (default: OUT/present and OUT/absent)")
def synth(
    out: Path,
    count: int,
    seed: int,
    size: str,
    present_ratio: float,
    fmt: str,
    mark_size: str | None,
    flat: bool,
) -> None:
    """Generate synthetic microchip images, with a labels.csv (file, label, mark box)."""
    from inspectd.synth import SynthSpec, write_dataset

    match = re.fullmatch(r"(\d+)x(\d+)", size)
    if not match:
        raise click.BadParameter("expected WIDTHxHEIGHT, e.g. 640x512", param_hint="--size")
    width, height = int(match.group(1)), int(match.group(2))
    if min(width, height) < 128:
        raise click.BadParameter("images must be at least 128 px on each side", param_hint="--size")
    base = SynthSpec()
    scale = min(width, height) / min(base.width, base.height)
    low, high = round(base.mark_min * scale), round(base.mark_max * scale)
    if mark_size is not None:
        sizes = re.fullmatch(r"(\d+)-(\d+)", mark_size)
        if not sizes or not 8 <= int(sizes.group(1)) <= int(sizes.group(2)) < min(width, height) - 8:
            raise click.BadParameter(
                "expected MIN-MAX within the image, e.g. 15-40", param_hint="--mark-size"
            )
        low, high = int(sizes.group(1)), int(sizes.group(2))
    spec = SynthSpec(width=width, height=height, present_ratio=present_ratio, mark_min=low, mark_max=high)
    labels = write_dataset(out, count, seed, spec, fmt, flat)
    click.echo(f"wrote {count} images and {labels}")


@cli.command()
@click.pass_obj
def models(obj: _Obj) -> None:
    """List model versions in the registry; * marks the one this station runs."""
    from inspectd import activations
    from inspectd.registry import ModelRegistry

    cfg = obj.config()
    registry = ModelRegistry(cfg.paths.models)
    wanted = activations.wanted(cfg.model, _engine(obj), cfg.station.name, registry)
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


EX_DATAERR = 65  # sysexits.h: the input data (labels) cannot be used
EX_TEMPFAIL = 75  # sysexits.h: not done now (retrain: the active model changed during the run)


def _engine(obj: _Obj) -> Any:
    from inspectd import db

    cfg = obj.config()
    engine = db.make_engine(cfg.database.url, cfg.database.busy_timeout_s)
    try:
        db.require_current_schema(engine)
    except db.SchemaMismatch as exc:
        raise click.ClickException(str(exc)) from None
    return engine


@cli.command()
@click.argument("ref", required=False)
@click.argument("label", required=False, type=click.Choice(["present", "absent"]))
@click.option(
    "--import",
    "import_csv",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="CSV of (file name, hash or image path; label[; x, y, w, h]) rows, applied all or nothing",
)
@click.option("--box", default=None, help="where the symbol is: x,y,w,h in pixels (for tiled training)")
@click.option(
    "--sync", is_flag=True, help="take the images in the label folders (paths.labels/present|absent)"
)
@click.option("--by", default=None, help="who labels (stored with the label)")
@click.pass_obj
def label(
    obj: _Obj,
    ref: str | None,
    label: str | None,
    import_csv: Path | None,
    box: str | None,
    sync: bool,
    by: str | None,
) -> None:
    """Record the true answer: `label ID|HASH|FILE present|absent`, `--import CSV`, or `--sync`."""
    from inspectd import labels as lab

    engine = _engine(obj)
    try:
        if import_csv is not None:
            labeled, added = lab.import_csv(engine, import_csv, by)
            click.echo(f"labeled {labeled} results, added {added} examples")
        elif sync:
            cfg = obj.config()
            report = lab.sync_folders(engine, cfg.paths.labels, cfg.watch.extensions, by)
            click.echo(
                f"linked {report.linked} results, added {report.added} examples, "
                f"relabeled {report.relabeled}, unchanged {report.unchanged}"
            )
            for problem in report.skipped:
                click.echo(f"skipped {problem}", err=True)
        elif ref is not None and label is not None:
            row = lab.label_result(engine, ref, label, by, lab.parse_box(box))
            click.echo(f"result {row.id} ({row.original_name}) labeled {label}; the model said {row.verdict}")
        else:
            raise click.UsageError("give REF and LABEL, or --import CSV, or --sync")
    except lab.LabelError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="uncertain results (scores nearest the threshold)",
)
@click.option(
    "--confident",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="plus a random sample of confident ones",
)
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table")
@click.option(
    "--explain",
    "explain_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="also write an explain picture per result into this folder (linked in the output)",
)
@click.pass_obj
def review(obj: _Obj, limit: int, confident: int, fmt: str, explain_dir: Path | None) -> None:
    """Unlabeled results most worth a human look, to label next."""
    from inspectd import labels as lab

    rows = lab.review(_engine(obj), limit, confident)
    if explain_dir is not None:
        from inspectd.explain import ExplainError, explain
        from inspectd.tiles import view_for

        cfg = obj.config()
        inferencer = _station_model(obj)
        limits = _limits(cfg)
        for row in rows:
            out = explain_dir / f"{row['id']}-{Path(row['stored_path']).stem}.explain.png"
            try:
                view = view_for(inferencer.meta, cfg.model)
                explain(
                    Path(row["stored_path"]),
                    inferencer,
                    limits,
                    view,
                    out,
                    cfg.model.threshold,
                    cfg.model.tile_reduce,
                )
                row["explain"] = str(out)
            except ExplainError as exc:
                row["explain"] = None
                click.echo(f"no picture for result {row['id']}: {exc}", err=True)
    if fmt == "jsonl":
        for row in rows:
            click.echo(json.dumps(row))
        return
    for row in rows:
        click.echo(
            f"{row['id']:>6}  {row['why']:<16}  score {row['score']:.3f} (threshold {row['threshold']:.3f}, "
            f"{row['verdict']})  {row['stored_path']}"
            + (f"  picture: {row['explain']}" if row.get("explain") else "")
        )
    click.echo(f"({len(rows)} to review; label with: inspectd label ID present|absent)")


def _limits(cfg: Config) -> Any:
    from inspectd.decode import DecodeLimits, install_pixel_limit

    install_pixel_limit(cfg.decode.max_pixels)
    return DecodeLimits(cfg.decode.max_pixels, cfg.decode.max_file_bytes)


def _station_model(obj: _Obj, version: str | None = None) -> Any:
    """The model this station runs (or ``version``), loaded as the daemon loads it."""
    from inspectd import activations
    from inspectd.infer import ModelLoadError, load_version
    from inspectd.registry import ModelRegistry

    cfg = obj.config()
    registry = ModelRegistry(cfg.paths.models)
    registry.ensure_active()
    version = version or activations.wanted(cfg.model, _engine(obj), cfg.station.name, registry).version
    try:
        return load_version(registry, version or "", cfg.model, cfg.batch.max_size)
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="PNG to write")
@click.option("--version", "version", default=None, help="model version (default: this station's)")
@click.pass_obj
def explain(obj: _Obj, file: Path, out: Path | None, version: str | None) -> None:
    """Write a PNG of FILE with the tile-score heatmap and the box where the symbol was found."""
    from inspectd.explain import ExplainError, default_out
    from inspectd.explain import explain as run_explain
    from inspectd.tiles import view_for

    cfg = obj.config()
    target = out or default_out(cfg.paths.runs, file)
    inferencer = _station_model(obj, version)
    view = view_for(inferencer.meta, cfg.model)
    try:
        result = run_explain(
            file, inferencer, _limits(cfg), view, target, cfg.model.threshold, cfg.model.tile_reduce
        )
    except ExplainError as exc:
        raise click.ClickException(str(exc)) from None
    box = "-" if result.box is None else "{},{} {}x{}".format(*result.box)
    click.echo(
        f"{result.verdict} (score {result.score:.3f}, threshold {result.threshold:.3f}, "
        f"{result.tiles} tiles, box {box}): {result.picture}"
    )


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
    type=click.Choice(["none", "dynamic", "int8"]),
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
    obj: _Obj,
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
    from inspectd.infer import ModelLoadError
    from inspectd.train.backbones import WeightsUnavailable
    from inspectd.train.composite import ArtworkError
    from inspectd.train.dataset import NotEnoughLabels
    from inspectd.train.retrain import retrain as run_retrain

    if input_size is not None and 0 < input_size < 32:
        raise click.BadParameter("0 (chosen from the images) or 32 to 512", param_hint="--input-size")
    cfg = obj.config()
    try:
        outcome = run_retrain(
            cfg,
            _engine(obj),
            data,
            force,
            {
                "epochs": epochs,
                "backbone": backbone,
                "input_size": input_size,
                "quantize": quantize,
                "head": head,
                "symbol": symbol,
            },
        )
    except (NotEnoughLabels, ArtworkError) as exc:
        click.echo(f"inspectd retrain: {exc}", err=True)
        sys.exit(EX_DATAERR)
    except WeightsUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except ModelLoadError as exc:  # the new version would be refused by the daemon: nothing installed
        raise click.ClickException(f"retrain: the new version cannot be used: {exc}") from None
    from inspectd.train.report import summary

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
        sys.exit(EX_TEMPFAIL)


@cli.command("eval")
@click.argument("version", required=False)
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="a folder of labeled images (DATA/present/, DATA/absent/); default: the labeled holdout",
)
@click.pass_obj
def eval_command(obj: _Obj, version: str | None, data: Path | None) -> None:
    """Evaluate a model version (default: the active one): report.json, plots and a summary."""
    from inspectd.infer import ModelLoadError
    from inspectd.train.assess import evaluate_version
    from inspectd.train.dataset import NotEnoughLabels
    from inspectd.train.report import summary

    try:
        result, out = evaluate_version(obj.config(), _engine(obj), version, data)
    except NotEnoughLabels as exc:
        click.echo(f"inspectd eval: {exc}", err=True)
        sys.exit(EX_DATAERR)
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(summary(result))
    click.echo(f"report: {out / 'report.json'}")


def _version_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from inspectd.registry import RegistryError, check_version

    try:
        return check_version(value)
    except RegistryError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.argument("version", callback=_version_name)
@click.option("--station", help="promote for this station only (default: every station)")
@click.pass_obj
def promote(obj: _Obj, version: str, station: str | None) -> None:
    """Make VERSION the active model (running daemons switch within seconds).

    Recorded in the database, so every station that follows it (``[model] follow_database``) switches;
    with --station only that station does. VERSION is loaded first with every check the daemon runs
    (this station's [model] and [batch] settings): a version it would refuse is not promoted.
    """
    from inspectd import activations
    from inspectd.infer import ModelLoadError, load_version
    from inspectd.registry import ModelRegistry, RegistryError

    cfg = obj.config()
    registry = ModelRegistry(cfg.paths.models)
    try:
        load_version(registry, version, cfg.model, cfg.batch.max_size)  # refuse what the daemon would
    except ModelLoadError as exc:
        raise click.ClickException(f"not promoted: {exc}") from None
    engine = _engine(obj)
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
def rollback(obj: _Obj) -> None:
    """Re-activate the model that was active before the current one (on every station), if the daemon
    would load it."""
    from inspectd import activations
    from inspectd.infer import ModelLoadError, load_version
    from inspectd.registry import ModelRegistry, RegistryError

    cfg = obj.config()
    engine = _engine(obj)
    registry = ModelRegistry(cfg.paths.models)
    with registry.lock():
        current = registry.active_version()
        try:
            version = registry.previous_version()
            load_version(registry, version, cfg.model, cfg.batch.max_size)
        except RegistryError as exc:
            raise click.ClickException(str(exc)) from None
        except ModelLoadError as exc:
            raise click.ClickException(f"not rolled back: {exc}") from None
        registry.activate(version, reason=f"rollback from {current}")
        activations.record(engine, version, None, "rollback")
    click.echo(f"active model: {version}")


def main() -> None:
    cli()
