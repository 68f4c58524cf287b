"""Labels in and out in the formats tools use: CSV (read by header name, each row's true line number),
Label Studio tasks with the model's predictions and Label Studio's JSON export back, and the labeled
images as an ImageFolder tree or a CSV with boxes.

Label Studio: ``export labelstudio`` writes the review queue as tasks whose ``data`` names the result
(``result_id``, ``content_hash``, the image URL) and whose ``predictions`` are the model's verdict (a
``choices`` result) and, for a tiled model, its box (a ``rectanglelabels`` result, in percent of the
image). A labeling config that matches them::

    <View>
      <Image name="image" value="$image"/>
      <Choices name="verdict" toName="image"><Choice value="present"/><Choice value="absent"/></Choices>
      <RectangleLabels name="box" toName="image"><Label value="symbol"/></RectangleLabels>
    </View>

``label --import-labelstudio`` reads Label Studio's JSON export of those tasks: each task's latest
annotation's choice is the label, its rectangle (if any) the box.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from inspectd.core.db import Result
from inspectd.core.records import Box, Verdict
from inspectd.ops.labels import LABELS, LabelError, find_result, format_box, parse_box, upsert_example

REF_COLUMNS = ("result_id", "id", "content_hash", "hash", "file", "name", "path")  # most specific first
BOX_COLUMNS = ("x", "y", "w", "h")
DEFAULT_IMAGE_URL = "/data/local-files/?d={stored_path}"  # Label Studio's local file storage


@dataclass(frozen=True, slots=True)
class CsvRow:
    line: int  # its line in the file (1-based, as an editor shows it)
    ref: str
    label: str
    box: Box | None


def read_csv(path: Path) -> Iterator[CsvRow | str]:
    """Each data row of a labels CSV, or a problem naming its line. With a header (a ``label`` column),
    columns are found by name: the reference is the first filled of ``result_id``, ``id``,
    ``content_hash``, ``hash``, ``file``, ``name``, ``path``; the box ``x``, ``y``, ``w``, ``h``. Without
    one: file, label, x, y, w, h."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header: dict[str, int] | None = None
            for fields in reader:
                line = reader.line_num
                if not any(f.strip() for f in fields):
                    continue
                if header is None and any(f.strip().lower() == "label" for f in fields):
                    header = {f.strip().lower(): i for i, f in enumerate(fields)}
                    if not any(c in header for c in REF_COLUMNS):
                        yield f"line {line}: no column names the image ({', '.join(REF_COLUMNS)})"
                        return
                    continue
                yield _row(line, fields, header)
    except UnicodeDecodeError as exc:
        yield f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
    except csv.Error as exc:
        yield f"{path}: not a CSV file ({exc})"


def _row(line: int, fields: list[str], header: dict[str, int] | None) -> CsvRow | str:
    def column(name: str, position: int) -> str:
        if header is None:
            return fields[position].strip() if position < len(fields) else ""
        index = header.get(name)
        return fields[index].strip() if index is not None and index < len(fields) else ""

    named = (column(c, -1) for c in REF_COLUMNS)
    ref = column("", 0) if header is None else next((r for r in named if r), "")
    label = column("label", 1).lower()
    if not ref:
        return f"line {line}: no file, hash or id"
    if label not in LABELS:
        return f"line {line}: label must be present or absent, not {label!r}"
    corners = [column(name, 2 + i) for i, name in enumerate(BOX_COLUMNS)]
    box = None
    if label == Verdict.PRESENT and any(corners):
        try:
            box = parse_box(",".join(corners))
        except LabelError as exc:
            return f"line {line}: {exc}"
    return CsvRow(line, ref, label, box)


def import_csv(engine: Engine, path: Path, by: str | None) -> tuple[int, int]:
    """Apply every row of a labels CSV (read_csv), all or nothing. A reference that matches no result but
    names an existing image file (relative to the CSV's folder) adds that image as an example. Returns
    (results labeled, examples added); LabelError lists every problem with its line."""
    now = datetime.now(UTC)
    labeled = added = 0
    problems: list[str] = []
    with Session(engine) as session, session.begin():
        for row in read_csv(path):
            if isinstance(row, str):
                problems.append(row)
                continue
            try:
                result = find_result(session, row.ref)
            except LabelError as exc:
                image = (path.parent / row.ref).resolve()
                if image.is_file():
                    upsert_example(session, image, row.label, "import", by, now, row.box)
                    added += 1
                else:
                    problems.append(f"line {row.line}: {exc}")
                continue
            result.label, result.labeled_by, result.labeled_at = row.label, by, now
            result.label_box = format_box(row.box)
            labeled += 1
        if problems:
            session.rollback()
            raise LabelError("nothing imported:\n  " + "\n  ".join(problems))
    return labeled, added


# --- Label Studio ---------------------------------------------------------------------------------------


def labelstudio_tasks(
    items: list[dict[str, Any]], image_url: str = DEFAULT_IMAGE_URL
) -> list[dict[str, Any]]:
    """Tasks for the review queue's items (labels.review), each with the model's prediction."""
    tasks = []
    for item in items:
        result: list[dict[str, Any]] = [
            {
                "from_name": "verdict",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [item["verdict"]]},
            }
        ]
        if item.get("box") and item.get("width") and item.get("height"):
            x, y, w, h = item["box"]
            result.append(
                {
                    "from_name": "box",
                    "to_name": "image",
                    "type": "rectanglelabels",
                    "original_width": item["width"],
                    "original_height": item["height"],
                    "value": {
                        "x": 100 * x / item["width"],
                        "y": 100 * y / item["height"],
                        "width": 100 * w / item["width"],
                        "height": 100 * h / item["height"],
                        "rotation": 0,
                        "rectanglelabels": ["symbol"],
                    },
                }
            )
        tasks.append(
            {
                "data": {
                    "image": image_url.format(id=item["id"], stored_path=item["stored_path"]),
                    "result_id": item["id"],
                    "original_name": item["original_name"],
                },
                "predictions": [
                    {"model_version": item["model_version"], "score": item["score"], "result": result}
                ],
            }
        )
    return tasks


def import_labelstudio(engine: Engine, path: Path, by: str | None) -> tuple[int, int]:
    """Label Studio's JSON export of our tasks, all or nothing: (results labeled, tasks without an
    annotation). A problem names the task (its position and Label Studio's id)."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelError(f"{path}: not a Label Studio JSON export ({exc})") from None
    if not isinstance(tasks, list):
        raise LabelError(f"{path}: a Label Studio JSON export is a list of tasks")
    labeled = skipped = 0
    problems: list[str] = []
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        for n, task in enumerate(tasks, start=1):
            where = f"task {n}" + (
                f" (id {task.get('id')})" if isinstance(task, dict) and "id" in task else ""
            )
            try:
                answer = _answer(task)
            except LabelError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if answer is None:
                skipped += 1
                continue
            ref, label, box = answer
            try:
                row = find_result(session, ref)
            except LabelError as exc:
                problems.append(f"{where}: {exc}")
                continue
            row.label, row.labeled_by, row.labeled_at = label, by or "label-studio", now
            row.label_box = format_box(box)
            labeled += 1
        if problems:
            session.rollback()
            raise LabelError("nothing imported:\n  " + "\n  ".join(problems))
    return labeled, skipped


def _answer(task: Any) -> tuple[str, str, Box | None] | None:
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise LabelError("not a task (no data)")
    ref = task["data"].get("result_id")
    if not isinstance(ref, int | str) or not str(ref).strip():
        raise LabelError("its data has no result_id (export tasks with `inspectd export labelstudio`)")
    annotations = [
        a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")
    ]
    if not annotations:
        return None
    latest = max(annotations, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
    label, box = None, None
    for result in latest.get("result") or []:
        value = result.get("value") or {}
        if result.get("type") == "choices" and value.get("choices"):
            label = str(value["choices"][0]).lower()
        if result.get("type") == "rectanglelabels":
            w, h = result.get("original_width"), result.get("original_height")
            if not isinstance(w, int | float) or not isinstance(h, int | float):
                raise LabelError("a rectangle without original_width/original_height")
            box = (
                round(value["x"] * w / 100),
                round(value["y"] * h / 100),
                max(1, round(value["width"] * w / 100)),
                max(1, round(value["height"] * h / 100)),
            )
    if label not in LABELS:
        raise LabelError(f"its annotation chooses {label!r}, not present or absent")
    return str(ref), label, box if label == Verdict.PRESENT else None


# --- labeled data out -----------------------------------------------------------------------------------


def labeled_rows(engine: Engine) -> list[Any]:
    statement = select(
        Result.id,
        Result.content_hash,
        Result.original_name,
        Result.stored_path,
        Result.label,
        Result.label_box,
    ).where(Result.label.is_not(None))
    with engine.connect() as conn:
        return list(conn.execute(statement.order_by(Result.id)))


def export_csv(engine: Engine, out: Path) -> int:
    """Every labeled result: result_id, content_hash, file (the archived path), label, x, y, w, h."""
    rows = labeled_rows(engine)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["result_id", "content_hash", "file", "label", *BOX_COLUMNS])
        for r in rows:
            box = parse_box(r.label_box) if r.label_box else None
            writer.writerow([r.id, r.content_hash, r.stored_path, r.label, *(box or ("", "", "", ""))])
    return len(rows)


def export_imagefolder(engine: Engine, out: Path) -> tuple[int, list[str]]:
    """``out/present/`` and ``out/absent/``: each labeled result's archived image, as a hard link when the
    filesystem allows (else a copy), named ``<id>-<original name>``. Returns (images, problems)."""
    written, problems = 0, []
    for r in labeled_rows(engine):
        folder = out / r.label
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{r.id}-{Path(r.original_name).name}"
        source = Path(r.stored_path)
        if target.exists():
            written += 1
            continue
        try:
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
        except OSError as exc:
            problems.append(f"result {r.id}: {source}: {exc.strerror or exc}")
            continue
        written += 1
    return written, problems
