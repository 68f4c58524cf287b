"""``inspectd synth``, ``label``, ``review``: the images and labels operators and maintainers make."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from inspectd.core.records import Verdict
from inspectd.ops.cli.base import (
    Obj,
    cli,
    engine_for,
    limits_for,
    station_model,
)


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
    from inspectd.ops.synth import SynthSpec, write_dataset

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
@click.argument("ref", required=False)
@click.argument("label", required=False, type=click.Choice([v.value for v in Verdict]))
@click.option(
    "--import",
    "import_csv",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="CSV of labels (columns by header name: file|hash|id, label, x, y, w, h), applied all or nothing",
)
@click.option(
    "--import-labelstudio",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Label Studio's JSON export of tasks from `inspectd export labelstudio`, applied all or nothing",
)
@click.option("--box", default=None, help="where the symbol is: x,y,w,h in pixels (for tiled training)")
@click.option(
    "--sync", is_flag=True, help="take the images in the label folders (paths.labels/present|absent)"
)
@click.option("--by", default=None, help="who labels (stored with the label)")
@click.pass_obj
def label(
    obj: Obj,
    ref: str | None,
    label: str | None,
    import_csv: Path | None,
    import_labelstudio: Path | None,
    box: str | None,
    sync: bool,
    by: str | None,
) -> None:
    """Record the true answer: `label ID|HASH|FILE present|absent`, `--import CSV`, or `--sync`."""
    from inspectd.ops import label_formats
    from inspectd.ops import labels as lab

    engine = engine_for(obj)
    try:
        if import_csv is not None:
            labeled, added = label_formats.import_csv(engine, import_csv, by)
            click.echo(f"labeled {labeled} results, added {added} examples")
        elif import_labelstudio is not None:
            labeled, unannotated = label_formats.import_labelstudio(engine, import_labelstudio, by)
            click.echo(f"labeled {labeled} results; {unannotated} tasks had no annotation")
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
            raise click.UsageError(
                "give REF and LABEL, or --import CSV, --import-labelstudio JSON, or --sync"
            )
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
def review(obj: Obj, limit: int, confident: int, fmt: str, explain_dir: Path | None) -> None:
    """Unlabeled results most worth a human look, to label next."""
    from inspectd.ops import labels as lab

    rows = lab.review(engine_for(obj), limit, confident)
    if explain_dir is not None:
        from inspectd.ops.explain import ExplainError, explain

        cfg = obj.config()
        model = station_model(obj)
        limits = limits_for(cfg)
        for row in rows:
            out = explain_dir / f"{row['id']}-{Path(row['stored_path']).stem}.explain.png"
            try:
                explain(Path(row["stored_path"]), model, limits, out)
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


@cli.group("export")
def export_group() -> None:
    """Labels and the review queue in the formats other tools read."""


@export_group.command("labelstudio")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--image-url", default=None, help="URL of each image: {id} and {stored_path} are filled in")
@click.pass_obj
def export_labelstudio(obj: Obj, out: Path, limit: int, image_url: str | None) -> None:
    """The review queue as Label Studio tasks with the model's predictions (pre-annotations)."""
    from inspectd.ops import label_formats
    from inspectd.ops import labels as lab

    items = lab.review(engine_for(obj), limit, max(1, limit // 5))
    tasks = label_formats.labelstudio_tasks(items, image_url or label_formats.DEFAULT_IMAGE_URL)
    out.write_text(json.dumps(tasks, indent=1) + "\n")
    click.echo(f"wrote {len(tasks)} tasks to {out}")


@export_group.command("imagefolder")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.pass_obj
def export_imagefolder(obj: Obj, out: Path) -> None:
    """Labeled images as OUT/present/ and OUT/absent/ (hard links where possible, else copies)."""
    from inspectd.ops import label_formats

    written, problems = label_formats.export_imagefolder(engine_for(obj), out)
    for problem in problems:
        click.echo(f"skipped {problem}", err=True)
    click.echo(f"{written} labeled images in {out}")


@export_group.command("csv")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.pass_obj
def export_csv(obj: Obj, out: Path) -> None:
    """Labeled results as CSV: result_id, content_hash, file, label, x, y, w, h."""
    from inspectd.ops import label_formats

    click.echo(f"{label_formats.export_csv(engine_for(obj), out)} labeled results in {out}")
