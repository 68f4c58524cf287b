"""The retraining loop on generated data: labels, retrain, reports, the promotion gate, live switching."""

from __future__ import annotations

import csv
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, Workspace, png_bytes, wait_until

pytestmark = pytest.mark.slow

Start = Callable[..., DaemonProcess]
QUICK = {
    "epochs": 2,
    "input_size": 64,
    "min_per_class": 10,
    "patience": 2,
    "batch_size": 16,
    "warmup_epochs": 1,
    "head_restarts": 1,  # test_mil and the artwork test below train more than one start
}


def results_from_daemon(ws: Workspace, daemon: Start, count: int) -> list[dict[str, object]]:
    proc = daemon()
    for i in range(count):
        ws.drop(f"line-{i:03d}.png", png_bytes(700 + i, present=bool(i % 2)))
    rows = proc.wait_rows(count)
    assert proc.stop() == 0
    return rows


def test_three_ways_to_label_and_review(daemon: Start, upgraded: Workspace, tmp_path: Path) -> None:
    rows = results_from_daemon(upgraded, daemon, 8)
    by_name = {str(r["original_name"]): r for r in rows}
    # 1. one at a time, by id, by hash prefix, by file name
    upgraded.cli("label", str(by_name["line-000.png"]["id"]), "absent", "--by", "ana")
    upgraded.cli("label", str(by_name["line-001.png"]["content_hash"])[:12], "present")
    upgraded.cli("label", "line-002.png", "absent")
    unknown = upgraded.cli("label", "nope.png", "present", check=False)
    assert unknown.returncode == 1 and "no result matches" in unknown.stderr
    # 2. a CSV: names or hashes, plus an image the daemon never saw (added as an example)
    extra = tmp_path / "extra.png"
    extra.write_bytes(png_bytes(9999, present=True))
    sheet = tmp_path / "labels.csv"
    with sheet.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        writer.writerow(["line-003.png", "present"])
        writer.writerow([by_name["line-004.png"]["content_hash"], "absent"])
        writer.writerow(["extra.png", "present"])
    assert "labeled 2 results, added 1 examples" in upgraded.cli("label", "--import", str(sheet)).stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nline-005.png,present\nline-006.png,maybe\n")
    failed = upgraded.cli("label", "--import", str(bad), check=False)
    assert failed.returncode == 1 and "line 3" in failed.stderr and "nothing imported" in failed.stderr
    # 3. label folders: an archived image (links to its row) and a new one
    labels = upgraded.root / "var" / "labels"
    (labels / "present").mkdir(parents=True)
    shutil.copy(str(by_name["line-005.png"]["stored_path"]), labels / "present" / "copy-of-5.png")
    (labels / "present" / "new.png").write_bytes(png_bytes(8888, present=True))
    out = upgraded.cli("label", "--sync").stdout
    assert "linked 1 results, added 1 examples" in out
    assert "unchanged 2" in upgraded.cli("label", "--sync").stdout

    labeled = {str(r["original_name"]): r["label"] for r in upgraded.rows()}
    assert labeled == {
        "line-000.png": "absent",
        "line-001.png": "present",
        "line-002.png": "absent",
        "line-003.png": "present",
        "line-004.png": "absent",
        "line-005.png": "present",
        "line-006.png": None,
        "line-007.png": None,
    }
    # by name: two decode workers can commit line-001 before line-000
    assert {r["original_name"]: r for r in upgraded.rows()}["line-000.png"]["labeled_by"] == "ana"
    queue = [
        json.loads(line)
        for line in upgraded.cli(
            "review", "--format", "jsonl", "--limit", "1", "--confident", "1"
        ).stdout.splitlines()
    ]
    assert [q["why"] for q in queue] == ["uncertain", "confident-sample"]
    assert {q["original_name"] for q in queue} == {"line-006.png", "line-007.png"}


def make_dataset(ws: Workspace, folder: Path, count: int, seed: int) -> Path:
    ws.cli("synth", str(folder), "--count", str(count), "--seed", str(seed))
    return folder


@pytest.mark.train
def test_retrain_report_and_gate(upgraded: Workspace, tmp_path: Path) -> None:
    upgraded.write_config(retrain=QUICK)
    data = make_dataset(upgraded, tmp_path / "data", 160, 31)
    result = upgraded.cli("retrain", "--data", str(data), timeout=600)
    assert "NOT PROMOTED" in result.stdout, result.stdout  # two epochs at 64 px cannot beat the bundled model
    assert "candidate is worse than the active model" in result.stdout
    runs = list((upgraded.root / "var" / "runs").glob("retrain-*"))
    assert len(runs) == 1
    run = runs[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["promoted"] is False
    report = json.loads((run / "holdout-candidate" / "report.json").read_text())
    metrics = report["metrics"]
    for key in ("precision", "recall", "f1", "roc_auc", "pr_auc", "confusion_matrix", "threshold"):
        assert key in metrics
    assert report["threshold_table"] and report["policy"]["name"] == "best_f1"
    assert "worst_false_positives" in report and "worst_false_negatives" in report
    for plot in ("roc.png", "pr.png", "confusion.png", "scores.png"):
        assert (run / "holdout-candidate" / plot).stat().st_size > 1000
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert list((run / "tensorboard" / "confusion").rglob("events.out.tfevents.*"))
    # the candidate is an immutable registry version with its dataset fingerprint, not active
    version = summary["version"]
    meta = json.loads((upgraded.models / "versions" / version / "metadata.json").read_text())
    assert meta["training"]["dataset_fingerprint"] and meta["input_size"] == [64, 64]
    conversion = meta["training"]["conversion"]  # int8 by default, or the float network and why
    assert meta["quantization"] == "int8" or "refused" in conversion, conversion
    assert conversion["checked_on"] > 0 and conversion["float_max_logit_difference"] < 1e-3
    assert (upgraded.models / "active").read_text().strip() != version
    # promote by hand, roll back
    upgraded.cli("promote", version)
    assert (upgraded.models / "active").read_text().strip() == version
    assert f"* {version}" in upgraded.cli("models").stdout
    upgraded.cli("rollback")
    assert (upgraded.models / "active").read_text().strip() != version
    # eval on a separate labeled folder
    other = make_dataset(upgraded, tmp_path / "other", 40, 77)
    evaluated = upgraded.cli("eval", version, "--data", str(other))
    assert "ROC-AUC" in evaluated.stdout and "confusion" in evaluated.stdout
    assert len(list((upgraded.root / "var" / "runs").glob(f"eval-{version}-*/report.json"))) == 1


@pytest.mark.train
def test_pretrained_backbone_from_local_weights(upgraded: Workspace, tmp_path: Path) -> None:
    """ImageNet weights cannot be downloaded here: a weights file the project makes itself stands in."""
    from inspectd.train.tf import keras

    k = keras()
    weights = tmp_path / "mobilenet_v3_small.weights.h5"
    k.applications.MobileNetV3Small(
        input_shape=(64, 64, 3), include_top=False, weights=None, include_preprocessing=True
    ).save_weights(str(weights))
    upgraded.write_config(
        retrain={
            **QUICK,
            "epochs": 1,
            "fine_tune_epochs": 1,
            "fine_tune_layers": 5,
            "quantize": "none",  # quantization has its own test; MobileNetV3's refusals cost ~10 s here
            "backbone": "mobilenet_v3_small",
            "weights": {"mobilenet_v3_small": str(weights)},
        }
    )
    data = make_dataset(upgraded, tmp_path / "data", 64, 5)
    result = upgraded.cli("retrain", "--data", str(data), "--force", timeout=600)
    assert "PROMOTED" in result.stdout
    assert f'"weights": "{weights}"' in result.stderr  # backbone.ready log line: the file was loaded
    assert "fine_tune.start" in result.stderr
    active = (upgraded.models / "active").read_text().strip()
    assert active.endswith("mobilenet-v3-small")
    meta = json.loads((upgraded.models / "versions" / active / "metadata.json").read_text())
    # the MIL head: one start (QUICK's head_restarts), a warm-up epoch and one on the maximum, then one of
    # fine-tuning
    assert meta["training"]["weights"] == str(weights) and meta["training"]["epochs_run"] == 1 + 1 + 1

    missing = tmp_path / "missing.weights.h5"
    upgraded.write_config(
        retrain={**QUICK, "backbone": "mobilenet_v3_small", "weights": {"mobilenet_v3_small": str(missing)}}
    )
    failed = upgraded.cli("retrain", "--data", str(data), check=False, timeout=600)
    assert failed.returncode == 1 and "no such file" in failed.stderr
    assert "dataset.ready" not in failed.stderr  # refused before a single image is decoded


def test_too_few_labels(upgraded: Workspace, tmp_path: Path) -> None:
    data = make_dataset(upgraded, tmp_path / "few", 6, 3)
    result = upgraded.cli("retrain", "--data", str(data), check=False)
    assert result.returncode == 65
    assert "labeled" in result.stderr and "min_per_class" in result.stderr
    status = json.loads((upgraded.root / "var" / "runs" / "last-retrain.json").read_text())
    assert status["outcome"] == "failed" and "min_per_class" in status["detail"]


def test_live_switch_loses_and_doubles_nothing(daemon: Start, upgraded: Workspace) -> None:
    proc = daemon()
    old = (upgraded.models / "active").read_text().strip()
    new_dir = upgraded.models / "versions" / "switched-2"
    shutil.copytree(upgraded.models / "versions" / old, new_dir)
    meta = json.loads((new_dir / "metadata.json").read_text())
    meta["version"] = "switched-2"
    (new_dir / "metadata.json").write_text(json.dumps(meta))
    total = 80
    stop = threading.Event()

    def feed() -> None:
        for i in range(total):
            upgraded.drop(f"live-{i:03d}.png", png_bytes(4000 + i))
            time.sleep(0.03)
        stop.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    wait_until(lambda: len(upgraded.rows()) >= 10, 30, "the first rows")
    upgraded.cli("promote", "switched-2")
    feeder.join()
    rows = proc.wait_rows(total, timeout=60)
    wait_until(lambda: not upgraded.waiting(), 20, "incoming empty")
    assert proc.stop() == 0
    rows = upgraded.rows()
    assert len(rows) == total and len({r["content_hash"] for r in rows}) == total
    versions = [r["model_version"] for r in rows]
    assert set(versions) == {old, "switched-2"}
    switch = versions.index("switched-2")
    assert all(v == old for v in versions[:switch]) and all(v == "switched-2" for v in versions[switch:])
    assert len(upgraded.archived()) == total


@pytest.mark.train
def test_training_with_every_augmentation_off_and_on(tmp_path: Path) -> None:
    """Both extremes of [retrain.augment] build and train (an empty pipeline once crashed retrain)."""
    import numpy as np

    from inspectd.core.retrain_config import AugmentConfig, RetrainConfig
    from inspectd.train.fit.frames import train_arrays

    rng = np.random.default_rng(0)
    x = rng.random((24, 32, 32, 1), dtype=np.float32)
    y = np.array([0, 1] * 12)
    off = AugmentConfig(
        rotation_deg=0,
        scale=0,
        shear_deg=0,
        translate=0,
        brightness=0,
        contrast=0,
        blur_sigma=0,
        noise_std=0,
        flip=False,
    )
    on = AugmentConfig(
        rotation_deg=90,
        scale=0.1,
        shear_deg=5,
        translate=0.1,
        brightness=0.1,
        contrast=0.1,
        blur_sigma=1.0,
        noise_std=0.02,
        flip=True,
    )
    for augment in (off, on):
        # the small CNN trains on images through the augmentation (the MIL head on feature maps)
        rc = RetrainConfig(
            backbone="small_cnn", head="global", input_size=32, epochs=1, batch_size=8, augment=augment
        )
        trained = train_arrays(rc, x, y, x, y, tmp_path / str(id(augment)))
        assert trained.epochs_run == 1 and len(trained.representative) == 24


@pytest.mark.train
def test_quantized_network_ships_only_if_it_ranks_as_well(tmp_path: Path) -> None:
    """int8 conversion: calibrated on training inputs, checked against the float network on validation
    inputs, self-tested as the daemon loads it; refused (the float network ships) when it loses ranking."""
    import numpy as np

    from inspectd.model.choice import AGREEMENT_TOLERANCE
    from inspectd.model.runtime import Inferencer
    from inspectd.ops.synth import SynthSpec
    from inspectd.train.convert import MAX_AUC_DROP, convert, export_version
    from inspectd.train.data.arrays import synthetic_arrays
    from inspectd.train.nets.small import small_cnn
    from inspectd.train.tf import keras

    keras().utils.set_random_seed(3)
    x, y = synthetic_arrays(240, 5, SynthSpec(), (48, 48))
    xv, yv = synthetic_arrays(120, 6, SynthSpec(), (48, 48))
    model = small_cnn((48, 48))
    model.compile(optimizer="adam", loss=keras().losses.BinaryCrossentropy(from_logits=True))
    model.fit(x, y, epochs=4, batch_size=32, verbose=0)

    floating = convert(model, (48, 48), "none", x[:64], xv, yv)
    kept = convert(model, (48, 48), "int8", x[:64], xv, yv)
    assert kept.quantization == "int8", kept.fidelity
    assert kept.fidelity["quantized_auc"] >= kept.fidelity["float_auc"] - MAX_AUC_DROP
    assert len(kept.content) < len(floating.content) / 2
    meta = export_version(kept, tmp_path / "q", "q-1", 0.5, (1.0, 0.0), xv[:8], {}, {"n": 1})
    conversion = meta.training["conversion"]
    assert meta.quantization == "int8" and conversion == {**kept.fidelity, **conversion}
    # the float network ships beside it, its scores within the agreement tolerance of the int8 one's
    assert meta.float_model_sha256 is not None
    assert conversion["float_score_disagreement"] <= AGREEMENT_TOLERANCE
    loaded = Inferencer.load(tmp_path / "q", num_threads=1, network="shipped")  # self-tests, as the daemon
    assert np.array_equal(
        loaded.logits(xv[:9]), np.concatenate([loaded.logits(xv[i : i + 1]) for i in range(9)])
    )
    differs = np.abs(loaded.logits(xv) - floating.logits(xv))
    assert 0 < float(differs.max()) < 2.0  # another network, close to the float one

    assert Inferencer.load(tmp_path / "q", num_threads=1, network="float").network == "none"
    strict = pytest.MonkeyPatch.context()
    with strict as patch:  # a float network that disagrees with the quantized one does not ship
        patch.setattr("inspectd.train.convert.AGREEMENT_TOLERANCE", 0.0)
        alone = export_version(kept, tmp_path / "q2", "q-2", 0.5, (1.0, 0.0), xv[:8], {}, {"n": 1})
    assert alone.float_model_sha256 is None and not (tmp_path / "q2" / "model-float.tflite").exists()
    assert Inferencer.load(tmp_path / "q2", num_threads=1).network == "int8"

    refused = convert(model, (48, 48), "int8", x[:64], xv, yv, max_auc_drop=-1.0)
    assert refused.quantization == "none" and refused.content == floating.content
    assert "refused" in refused.fidelity


@pytest.mark.train
def test_retrain_does_not_activate_over_a_promotion_made_while_it_trained(
    upgraded: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone promotes another version while the retrain trains: the retrain's version is compared with
    the model active at its start, so it is installed but not activated, and the retrain says so."""
    from click.testing import CliRunner

    from inspectd.core import activations, db
    from inspectd.core.registry import ModelRegistry
    from inspectd.ops.cli import cli
    from inspectd.train import inputs
    from inspectd.train.fit.frames import train_arrays

    upgraded.write_config(
        retrain={**QUICK, "epochs": 1, "input_size": 32, "min_per_class": 5, "quantize": "none"}
    )
    data = make_dataset(upgraded, tmp_path / "data", 60, 13)
    registry = ModelRegistry(upgraded.models)
    start = registry.ensure_active()
    other = upgraded.models / "versions" / "meanwhile-1"
    shutil.copytree(upgraded.models / "versions" / start, other)
    meta = json.loads((other / "metadata.json").read_text())
    meta["version"] = "meanwhile-1"
    (other / "metadata.json").write_text(json.dumps(meta))

    def train_then_someone_promotes(*args: object, **kwargs: object) -> object:
        trained = train_arrays(*args, **kwargs)  # type: ignore[arg-type]
        upgraded.cli("promote", "meanwhile-1")  # another user, another process, as the training ends
        return trained

    monkeypatch.setattr(inputs, "train_arrays", train_then_someone_promotes)
    result = CliRunner().invoke(
        cli, ["--config", str(upgraded.config), "retrain", "--data", str(data), "--force"]
    )
    assert result.exit_code == 75, result.output  # EX_TEMPFAIL: not done, the active model changed
    assert "NOT PROMOTED" in result.output
    assert f"registry pointer {start} -> meanwhile-1" in result.output
    assert "installed, not activated" in result.stderr
    (run,) = (p for p in (upgraded.root / "var" / "runs").glob("retrain-*") if p.is_dir())
    summary = json.loads((run / "summary.json").read_text())
    version = summary["version"]
    assert summary["promoted"] is False and summary["active_version"] == start
    status = json.loads((upgraded.root / "var" / "runs" / "last-retrain.json").read_text())
    assert status["outcome"] == "superseded" and status["version"] == version  # inspectd_retrain_last
    assert "database promotion (none) -> meanwhile-1" in summary["superseded"]
    # the promotion made meanwhile stands, in the registry and in the database; the new version is there
    assert registry.active_version() == "meanwhile-1"
    engine = db.make_engine(upgraded.db_url)
    assert activations.latest(engine, "any-station") == "meanwhile-1"
    assert [m.version for m in registry.list_versions()][-1] == version
    assert "active model: " + version in upgraded.cli("promote", version).stdout  # a complete version


@pytest.mark.train
def test_retrain_with_the_marks_artwork(upgraded: Workspace, tmp_path: Path) -> None:
    """`retrain --symbol ART`: the artwork composited into absent training images (a MIL head on the
    offline EfficientNet-Lite0, its places told where each composited mark is); the version keeps its
    Keras history and the list of holdout images; bad artwork is one clear line and exit 65."""
    import cv2
    import numpy as np

    art = np.full((60, 60), 255, np.uint8)
    cv2.circle(art, (30, 30), 22, 0, 5)
    cv2.line(art, (30, 8), (30, 52), 0, 5)
    cv2.line(art, (8, 30), (52, 30), 0, 5)
    assert cv2.imwrite(str(tmp_path / "mark.png"), art)
    upgraded.write_config(
        retrain={
            **QUICK,
            "backbone": "efficientnet_lite0",
            "head": "mil",
            "fine_tune_epochs": 0,
            "hard_negative_epochs": 1,
            "head_restarts": 2,
            "quantize": "none",
            "symbol": {"count": 40},
        }
    )
    data = make_dataset(upgraded, tmp_path / "data", 100, 9)
    from tests.images import png_bomb

    # a labeled image the decode stage refuses (a decompression bomb) is neither a background for the
    # artwork nor a source of geometric copies: it is left out, as everywhere else in training
    (data / "absent" / "bomb.png").write_bytes(png_bomb(100_000, 100_000))
    result = upgraded.cli(
        "retrain", "--data", str(data), "--symbol", str(tmp_path / "mark.png"), "--force", timeout=600
    )
    assert "PROMOTED" in result.stdout, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    composited = next(e for e in events if e["event"] == "symbol.composited")
    assert composited["images"] == 40 and composited["artwork"] == str(tmp_path / "mark.png")
    features = next(e for e in events if e["event"] == "features.ready")
    assert features["synthetic"] == 40
    assert any(e["event"] == "progress" and e["step"] == "compositing" and e["done"] == 40 for e in events)
    assert any(e["event"] == "hard_negatives.done" for e in events)
    (restarted,) = [e for e in events if e["event"] == "head.restarted"]  # a second head, from scratch
    assert restarted["restart"] == 1 and 0.0 <= restarted["validation_roc_auc"] <= 1.0
    version = (upgraded.models / "active").read_text().strip()
    folder = upgraded.models / "versions" / version
    with open(folder / "history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    assert len(history) >= 4 and {"epoch", "loss", "val_auc"} <= set(history[0])  # both heads' epochs
    with open(folder / "holdout.csv", newline="") as fh:
        holdout = list(csv.DictReader(fh))
    meta = json.loads((folder / "metadata.json").read_text())
    split = meta["training"]["split"]["holdout"]
    assert len(holdout) == split["present"] + split["absent"] > 0
    assert {row["label"] for row in holdout} == {"present", "absent"}
    assert all(Path(row["path"]).is_file() for row in holdout)
    assert meta["training"]["config"]["symbol"]["artwork"] == str(tmp_path / "mark.png")

    (tmp_path / "blank.png").write_bytes(b"not an image")
    failed = upgraded.cli(
        "retrain", "--data", str(data), "--symbol", str(tmp_path / "blank.png"), check=False
    )
    assert failed.returncode == 65, failed.stderr
    assert (
        failed.stderr.strip().splitlines()[-1]
        == f"inspectd retrain: {tmp_path / 'blank.png'}: not a readable image"
    )
