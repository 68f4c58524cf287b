"""The quality benchmark's generator (benchmarks/quality_data.py): deterministic, train and test from
disjoint material, labels that match what was drawn, and folders that `inspectd retrain --data` reads.
No training here."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks import quality_data as qd
from inspectd.core.tiles import View
from inspectd.daemon.intake.decode import DecodeLimits
from inspectd.train.data.dataset import folder_examples, load

SPEC = qd.SetSpec(train=10, train_present=4, test=8, test_present=3)
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@pytest.fixture(scope="module")
def sides() -> qd.Sides:
    try:
        return qd.split_material(qd.material(), SPEC)
    except RuntimeError as exc:  # a machine without the benchmark's Debian packages
        pytest.skip(f"quality material missing ({exc}): see the Makefile's bench-quality packages")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, sides: qd.Sides) -> Path:
    root = tmp_path_factory.mktemp("quality")
    for symbol in SPEC.symbols:
        qd.generate_symbol(SPEC, symbol, root / symbol, workers=1)
    return root


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_generator_is_deterministic_for_a_seed(generated: Path, tmp_path: Path) -> None:
    symbol = "circled_plus"
    again = qd.generate_symbol(SPEC, symbol, tmp_path / symbol, workers=1)
    assert digest(again) == digest(generated / symbol)
    parallel = qd.generate_symbol(SPEC, symbol, tmp_path / "parallel", workers=2)
    assert digest(parallel) == digest(generated / symbol)
    other = qd.generate_symbol(replace(SPEC, seed=SPEC.seed + 1), symbol, tmp_path / "other", workers=1)
    assert digest(other) != digest(generated / symbol)


def test_train_and_test_use_disjoint_backgrounds_and_fonts(generated: Path, sides: qd.Sides) -> None:
    groups = {s: {b.group for b in sides.backgrounds[s]} for s in qd.SPLITS}
    lineages = {s: {f.lineage for f in sides.fonts[s]} for s in qd.SPLITS}
    assert groups["train"] and groups["test"] and not groups["train"] & groups["test"]
    assert lineages["train"] and lineages["test"] and not lineages["train"] & lineages["test"]
    for symbol in SPEC.symbols:
        used: dict[str, dict[str, set[str]]] = {
            s: {"background": set(), "group": set(), "font": set(), "lineage": set()} for s in qd.SPLITS
        }
        for row in qd.read_manifest(generated / symbol):
            u = used[row["split"]]
            u["background"].add(row["background"])
            u["group"].add(row["background_group"])
            fonts = [row["target_font"], *row["lookalike_fonts"].split(";")]
            kinds = [row["target_lineage"], *row["lookalike_lineages"].split(";")]
            u["font"] |= {f for f in fonts if f and f != "drawn"}
            u["lineage"] |= {k for k in kinds if k and k != "drawn"}
        for key in ("background", "group", "font", "lineage"):
            assert not used["train"][key] & used["test"][key], f"{symbol}: a {key} on both sides"
        assert used["train"]["group"] <= groups["train"] and used["test"]["group"] <= groups["test"]
        assert used["train"]["lineage"] <= lineages["train"] and used["test"]["lineage"] <= lineages["test"]


def test_positives_hold_the_symbol_and_negatives_only_lookalikes(generated: Path) -> None:
    for symbol in SPEC.symbols:
        spec = qd.SYMBOLS[symbol]
        targets = {qd.shape_name(c) for c in spec.targets} | {f"drawn:{d}" for d in spec.target_drawn}
        lookalikes = {qd.shape_name(c) for c in spec.lookalikes} | {
            f"drawn:{d}" for d in spec.lookalike_drawn
        }
        assert not targets & lookalikes
        rows = qd.read_manifest(generated / symbol)
        for split in qd.SPLITS:
            total, present = SPEC.count(split)
            part = [r for r in rows if r["split"] == split]
            assert len(part) == total
            assert sum(r["label"] == "present" for r in part) == present
        for row in rows:
            assert row["file"].startswith(f"{row['split']}/{row['label']}/")
            assert (generated / symbol / row["file"]).is_file()
            placed = [x for x in row["lookalikes"].split(";") if x]
            assert set(placed) <= lookalikes
            if row["label"] == "present":
                assert row["target"] in targets
                assert float(row["target_ink"]) > 20 and float(row["target_contrast"]) > 0.02
                x, y, w, h = map(int, row["target_box"].split(","))
                assert min(x, y) >= 0 and x + w <= SPEC.frame and y + h <= SPEC.frame
                assert max(w, h) >= SPEC.min_size * 0.7
            else:
                assert row["target"] == "" and row["target_box"] == ""


def test_the_folders_are_what_retrain_and_eval_read(generated: Path) -> None:
    for symbol in SPEC.symbols:
        for split in qd.SPLITS:
            folder = generated / symbol / split
            items = folder_examples(folder, EXTENSIONS)
            total, present = SPEC.count(split)
            assert len(items) == total and sum(i.label for i in items) == present
            x, y, kept = load(items, View((64, 64)), DecodeLimits(64_000_000, 268_435_456), workers=1)
            assert x.shape == (total, 64, 64, 1) and len(kept) == total and int(y.sum()) == present


def test_the_cache_is_keyed_by_the_generator_parameters(sides: qd.Sides) -> None:
    mat = qd.material()
    assert SPEC.key(mat) == replace(SPEC).key(mat)
    assert SPEC.key(mat) != replace(SPEC, max_size=60.0).key(mat)
    assert SPEC.key(mat) != replace(SPEC, seed=1).key(mat)


def test_recipes_take_extra_flags_and_configuration_overrides() -> None:
    from benchmarks.quality import RECIPES, SEED, parse_recipes, split_flags

    recipes = parse_recipes(
        ["big=--backbone mobilenet_v3_small --input-size 224", "default=--epochs 5"], ["previous-default"]
    )
    assert recipes["seed-tutorial"] == SEED and "previous-default" not in recipes
    assert "previous-default" in RECIPES and RECIPES["default+symbol"] == "@symbol"
    assert recipes["default"] == "--epochs 5"
    assert split_flags(recipes["big"]) == ({}, ["--backbone", "mobilenet_v3_small", "--input-size", "224"])
    assert split_flags("INSPECTD_RETRAIN__TILE=96 --input-size 96") == (
        {"INSPECTD_RETRAIN__TILE": "96"},
        ["--input-size", "96"],
    )


def test_each_split_has_a_labels_csv_with_the_boxes_for_label_import(generated: Path) -> None:
    import csv

    from inspectd.ops.labels import parse_box

    for symbol in SPEC.symbols:
        manifest = {r["file"]: r for r in qd.read_manifest(generated / symbol)}
        for split in qd.SPLITS:
            folder = generated / symbol / split
            with open(folder / qd.LABELS_CSV, newline="") as fh:
                rows = list(csv.reader(fh))
            assert rows[0] == ["file", "label", "x", "y", "w", "h"]
            assert len(rows) - 1 == SPEC.count(split)[0]
            for file, label, *box in rows[1:]:
                assert (folder / file).is_file()
                entry = manifest[f"{split}/{file}"]
                assert label == entry["label"]
                assert parse_box(",".join(box)) == (
                    tuple(map(int, entry["target_box"].split(","))) if label == "present" else None
                )
