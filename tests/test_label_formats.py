"""Labels in and out: CSV by header name with true line numbers, Label Studio tasks and exports, an
ImageFolder tree and a CSV with boxes. Real SQLite (migrated), real files."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from inspectd.core import db
from inspectd.core.db import Result
from inspectd.ops import label_formats, labels
from tests.conftest import Workspace, png_bytes


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.upgrade(engine)
    now = datetime.now(UTC)
    archive = tmp_path / "processed"
    archive.mkdir()
    rows = []
    for i in range(4):
        path = archive / f"img-{i}.png"
        path.write_bytes(png_bytes(4000 + i))
        rows.append(
            {
                "content_hash": f"{i + 1:064x}",
                "original_name": f"img-{i}.png",
                "stored_path": str(path),
                "size_bytes": path.stat().st_size,
                "width": 640,
                "height": 512,
                "received_at": now,
                "processed_at": now,
                "latency_s": 0.01,
                "model_version": "bundled-2",
                "threshold": 0.5,
                "score": 0.3 + 0.1 * i,
                "verdict": "present" if i >= 2 else "absent",
                "status": "ok",
                "station": "s",
                "box_x": 10 * i,
                "box_y": 20,
                "box_w": 64,
                "box_h": 32,
            }
        )
    with engine.begin() as conn:
        conn.execute(sa.insert(Result), rows)
    yield engine
    engine.dispose()


def label_of(engine: Any, name: str) -> tuple[str | None, str | None]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(Result.label, Result.label_box).where(Result.original_name == name)
        ).one()
        return row.label, row.label_box


def test_csv_columns_are_read_by_header_name(engine: Any, tmp_path: Path) -> None:
    sheet = tmp_path / "labels.csv"
    sheet.write_text(
        "label,h,w,y,x,content_hash\n"
        f"present,9,8,7,6,{1:064x}\n"
        "\n"  # a blank line: skipped, and the line numbers stay true
        f"absent,,,,,{2:064x}\n"
    )
    assert label_formats.import_csv(engine, sheet, "ana") == (2, 0)
    assert label_of(engine, "img-0.png") == ("present", "6,7,8,9")
    assert label_of(engine, "img-1.png") == ("absent", None)


def test_a_bad_csv_names_the_true_lines_and_changes_nothing(engine: Any, tmp_path: Path) -> None:
    sheet = tmp_path / "bad.csv"
    sheet.write_text("file,label\nimg-0.png,present\n\n\nimg-1.png,maybe\nimg-2.png\nnope.png,absent\n")
    with pytest.raises(labels.LabelError) as error:
        label_formats.import_csv(engine, sheet, None)
    message = str(error.value)
    assert "line 5: label must be present or absent, not 'maybe'" in message
    assert "line 6: label must be present or absent" in message  # no label column value
    assert "line 7: no result matches 'nope.png'" in message
    assert label_of(engine, "img-0.png") == (None, None)  # all or nothing
    for content, expected in (
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"label,colour\npresent,red\n", "no column names the image"),
        (b"img-0.png,present,1,2,x,4\n", "line 1:"),
    ):
        sheet.write_bytes(content)
        with pytest.raises(labels.LabelError, match=expected):
            label_formats.import_csv(engine, sheet, None)


def test_label_studio_round_trip(engine: Any) -> None:
    items = labels.review(engine, 4, 0)
    tasks = label_formats.labelstudio_tasks(items, "http://station/ui/results/{id}/image")
    assert len(tasks) == 4
    first = tasks[0]
    prediction = first["predictions"][0]
    assert prediction["model_version"] == "bundled-2"
    assert first["data"]["image"] == f"http://station/ui/results/{first['data']['result_id']}/image"
    rectangle = next(r for r in prediction["result"] if r["type"] == "rectanglelabels")
    assert rectangle["value"]["width"] == pytest.approx(100 * 64 / 640)
    # what Label Studio exports after annotation: the prediction accepted on one task, corrected on
    # another (a new box), one task skipped, one cancelled
    exported = []
    for n, task in enumerate(tasks):
        annotations: list[dict[str, Any]] = []
        if n == 0:
            annotations = [{"result": prediction["result"], "updated_at": "2026-12-01T10:00:00"}]
        elif n == 1:
            annotations = [
                {"result": [{"type": "choices", "value": {"choices": ["absent"]}}], "updated_at": "1"},
                {
                    "updated_at": "2",
                    "result": [
                        {"type": "choices", "value": {"choices": ["present"]}},
                        {
                            "type": "rectanglelabels",
                            "original_width": 640,
                            "original_height": 512,
                            "value": {"x": 50, "y": 50, "width": 10, "height": 12.5},
                        },
                    ],
                },
            ]
        elif n == 3:
            annotations = [{"was_cancelled": True, "result": []}]
        exported.append({"id": 100 + n, **task, "annotations": annotations})
    path = Path(engine.url.database).parent / "export.json"
    path.write_text(json.dumps(exported))
    assert label_formats.import_labelstudio(engine, path, None) == (2, 2)
    with engine.connect() as conn:
        saved = {
            r.id: (r.label, r.label_box, r.labeled_by)
            for r in conn.execute(sa.select(Result.id, Result.label, Result.label_box, Result.labeled_by))
        }
    accepted = saved[tasks[0]["data"]["result_id"]]
    assert accepted[0] == items[0]["verdict"] and accepted[2] == "label-studio"
    assert saved[tasks[1]["data"]["result_id"]][:2] == ("present", "320,256,64,64")
    # a broken export is refused whole, naming the task
    exported[2]["data"] = {}
    path.write_text(json.dumps(exported))
    with pytest.raises(labels.LabelError, match=r"task 3 \(id 102\): its data has no result_id"):
        label_formats.import_labelstudio(engine, path, None)
    path.write_text("{not json")
    with pytest.raises(labels.LabelError, match="not a Label Studio JSON export"):
        label_formats.import_labelstudio(engine, path, None)


def test_labeled_data_out_as_imagefolder_and_csv(engine: Any, tmp_path: Path) -> None:
    labels.label_result(engine, "img-0.png", "present", "ana", (1, 2, 3, 4))
    labels.label_result(engine, "img-1.png", "absent", "ana")
    written, problems = label_formats.export_imagefolder(engine, tmp_path / "tree")
    assert written == 2 and problems == []
    assert [p.name for p in (tmp_path / "tree" / "present").iterdir()] == ["1-img-0.png"]
    assert [p.name for p in (tmp_path / "tree" / "absent").iterdir()] == ["2-img-1.png"]
    assert (tmp_path / "tree" / "present" / "1-img-0.png").read_bytes() == png_bytes(4000)
    out = tmp_path / "labeled.csv"
    assert label_formats.export_csv(engine, out) == 2
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["label"] == "present" and (rows[0]["x"], rows[0]["h"]) == ("1", "4")
    assert rows[1]["x"] == ""
    # and the CSV goes back in as it came out
    labels.clear_label(engine, 1)
    assert label_formats.import_csv(engine, out, None) == (2, 0)
    assert label_of(engine, "img-0.png") == ("present", "1,2,3,4")


def test_export_and_import_from_the_command_line(upgraded: Workspace, tmp_path: Path) -> None:
    engine = sa.create_engine(upgraded.db_url)
    with engine.begin() as conn:
        now = datetime.now(UTC)
        conn.execute(
            sa.insert(Result),
            [
                {
                    "content_hash": f"{9:064x}",
                    "original_name": "x.png",
                    "stored_path": "/nowhere/x.png",
                    "size_bytes": 1,
                    "received_at": now,
                    "processed_at": now,
                    "latency_s": 0.0,
                    "model_version": "v",
                    "threshold": 0.5,
                    "score": 0.4,
                    "verdict": "absent",
                    "status": "ok",
                    "station": "s",
                }
            ],
        )
    tasks = tmp_path / "tasks.json"
    assert "wrote 1 tasks" in upgraded.cli("export", "labelstudio", str(tasks)).stdout
    exported = json.loads(tasks.read_text())
    exported[0]["annotations"] = [{"result": [{"type": "choices", "value": {"choices": ["present"]}}]}]
    tasks.write_text(json.dumps(exported))
    out = upgraded.cli("label", "--import-labelstudio", str(tasks), "--by", "kim").stdout
    assert "labeled 1 results" in out
    tree = upgraded.cli("export", "imagefolder", str(tmp_path / "tree"), check=False)
    assert tree.returncode == 0 and "skipped result 1" in tree.stderr  # its file is gone: said, not fatal
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2]")
    failed = upgraded.cli("label", "--import-labelstudio", str(broken), check=False)
    assert (
        failed.returncode == 1 and "task 1: not a task" in failed.stderr and "Traceback" not in failed.stderr
    )
    engine.dispose()
