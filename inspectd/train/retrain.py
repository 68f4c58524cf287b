"""`inspectd retrain`: labeled images in, a new registry version out, promoted only if no worse."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine

from inspectd import activations, labels, logs
from inspectd.config import Config, RetrainConfig
from inspectd.decode import DecodeLimits
from inspectd.infer import Inferencer, ModelLoadError, max_inputs_for
from inspectd.records import Box
from inspectd.registry import (
    HOLDOUT_FILE,
    TRAINING_HISTORY_FILE,
    ModelRegistry,
    Tiling,
    write_meta,
)
from inspectd.tiles import View, region
from inspectd.train import report
from inspectd.train.assess import evaluate_items, load_registered
from inspectd.train.composite import Artwork, ArtworkError, load_artwork, synthesize
from inspectd.train.dataset import Split, gather, load, split
from inspectd.train.export import Converted, convert, export_version
from inspectd.train.fit import Trained, train_arrays
from inspectd.train.gate import gate
from inspectd.train.geometry import geometric, source_copies
from inspectd.train.progress import progress
from inspectd.train.tf import keras, tensorflow
from inspectd.train.tiled import train_tiled

log = logs.get("inspectd.retrain")


@dataclass(frozen=True)
class Outcome:
    version: str
    run_dir: Path
    promoted: bool  # activated
    decision: str
    candidate: dict[str, Any]
    active: dict[str, Any] | None
    # the gate passed (or --force) but the active model changed during the run, how (the version is
    # installed, not activated: it was compared with a model that is no longer the active one)
    superseded: str | None = None


AUTO_INPUT_MAX = 256  # retrain.input_size = 0: at most this many pixels per side


def auto_input_size(
    items: list[labels.Labeled], tile: int | None, roi: tuple[float, float, float, float] | None
) -> int:
    """``retrain.input_size = 0``: the input that keeps the symbol's pixels where the cost allows. Tiles
    are seen at their own resolution (up to AUTO_INPUT_MAX); whole frames (or the ROI) at the median
    longer side of the labeled images, rounded up to a multiple of 16 (the MIL network's stride), at
    most AUTO_INPUT_MAX: a 256 px frame is not resized at all."""
    from PIL import Image

    if tile is not None:
        side = tile
    else:
        sides = []
        for item in items[:200]:  # the headers only
            try:
                with Image.open(item.path) as image:
                    width, height = image.size
            except (OSError, ValueError):
                continue
            if roi is not None:
                box = region(roi, width, height)
                width, height = box[2], box[3]
            sides.append(max(width, height))
        side = int(np.median(sides)) if sides else AUTO_INPUT_MAX
    return int(min(AUTO_INPUT_MAX, max(32, -(-side // 16) * 16)))


def calibrate_converted(
    trained: Trained, rc: RetrainConfig, size: tuple[int, int]
) -> tuple[Converted, tuple[float, float], float]:
    """Convert (quantized as configured), then fit calibration and threshold on the converted network's
    validation logits: the scores the daemon will compute."""
    converted = convert(
        trained.model, size, rc.quantize, trained.representative, trained.check_x, trained.check_y
    )
    logits, labels = trained.frames(converted.logits)
    calibration, threshold = report.calibrate(labels, logits, rc.threshold_policy, rc.target_recall)
    return converted, calibration, threshold


def retrain(
    cfg: Config, engine: Engine, data: Path | None, force: bool, overrides: dict[str, Any]
) -> Outcome:
    artwork = overrides.get("symbol")
    rc = cfg.retrain.model_copy(
        update={k: v for k, v in overrides.items() if v is not None and k != "symbol"}
    )
    if artwork is not None:
        rc = rc.model_copy(update={"symbol": rc.symbol.model_copy(update={"artwork": artwork})})
    art = load_artwork(rc.symbol.artwork) if rc.symbol.artwork is not None else None
    if art is not None and rc.tile is not None:
        raise ArtworkError("retrain.symbol: composited marks train whole frames; unset retrain.tile")
    started = time.monotonic()
    tensorflow(threads=os.cpu_count() or 1)
    k = keras()
    k.utils.set_random_seed(rc.seed)
    now = datetime.now(UTC)
    version = f"{now:%Y%m%d-%H%M%S}-{rc.backbone.replace('_', '-')}"
    run_dir = cfg.paths.runs / f"retrain-{version}"
    run_dir.mkdir(parents=True)
    registry = ModelRegistry(cfg.paths.models)
    registry.ensure_active()  # a fresh install compares with the bundled model
    # what the candidate is compared with, and what must still be active when it is activated
    baseline = activations.active(engine, cfg.station.name, registry)
    active_version = activations.wanted(cfg.model, engine, cfg.station.name, registry).version
    assert active_version is not None, "ensure_active leaves an active version"

    items = gather(engine, cfg, data)
    parts: Split = split(items, rc.holdout_fraction, rc.validation_fraction, rc.seed, rc.min_per_class)
    if rc.input_size == 0:
        rc = rc.model_copy(update={"input_size": auto_input_size(parts.train, rc.tile, cfg.model.roi)})
        log.info("input_size.chosen", input_size=rc.input_size, max=AUTO_INPUT_MAX)
    size = (rc.input_size, rc.input_size)
    limits = DecodeLimits(cfg.decode.max_pixels, cfg.decode.max_file_bytes)
    log.info(
        "dataset.ready",
        **{f"{n}_{c}": v for n, counts in parts.counts().items() for c, v in counts.items()},
        fingerprint=parts.fingerprint()[:16],
    )
    if rc.tile is not None:
        trained = train_tiled(rc, cfg.model.roi, parts.train, parts.validation, limits, run_dir)
    else:
        view = View(size, cfg.model.roi)
        # the frames the decode stage accepted (its pixel, size and ROI limits): the geometric copies and
        # the composites are made from them alone, re-read at their source resolution
        x, y, decodable = load(parts.train, view, limits)
        if geometric(rc.augment) and rc.augment.source_copies:
            x, y = _with_source_copies(rc, decodable, x, y, size, cfg.model.roi)
        xv, yv, _ = load(parts.validation, view, limits)
        synthetic = None
        if art is not None:  # into the training split's absent images only
            synthetic = _synthesize(rc, art, [i for i in decodable if i.label == 0], size, cfg.model.roi)
        trained = train_arrays(rc, x, y, xv, yv, run_dir, synthetic=synthetic)
        del synthetic
    trained.model.save(run_dir / "model.keras")
    converted, calibration, threshold = calibrate_converted(trained, rc, size)
    training = {
        "tile": rc.tile,
        "tile_overlap": rc.tile_overlap if rc.tile else None,
        "backbone": rc.backbone,
        "weights": trained.weights,
        "input_size": rc.input_size,
        "epochs_run": trained.epochs_run,
        "config": json.loads(rc.model_dump_json()),
        "dataset_fingerprint": parts.fingerprint(),
        "split": parts.counts(),
        "seconds": round(time.monotonic() - started, 1),
        "parameters": int(trained.model.count_params()),
    }
    candidate_dir = run_dir / "version"
    meta = export_version(
        converted,
        candidate_dir,
        version,
        threshold,
        calibration,
        trained.samples,
        {},
        training,
        Tiling(tile=rc.tile, overlap=rc.tile_overlap) if rc.tile else None,
    )

    _keep_with_version(candidate_dir, run_dir, parts.holdout)

    # the same holdout for both models, each through its own preprocessing size and threshold; the
    # candidate with every check the daemon runs on this station, since it may be activated below
    candidate = Inferencer.load(candidate_dir, 0, max_inputs_for(meta, cfg.model, cfg.batch.max_size))
    cand_report = evaluate_items(
        candidate, parts.holdout, limits, rc, run_dir / "holdout-candidate", cfg.model
    )
    act_report: dict[str, Any] | None = None
    try:
        active = load_registered(registry, active_version)
        act_report = evaluate_items(active, parts.holdout, limits, rc, run_dir / "holdout-active", cfg.model)
    except ModelLoadError as exc:
        log.warning("active_model.unusable", version=active_version, error=str(exc))
    passed, decision = gate(cand_report, act_report, rc.gate)

    final_meta = meta.model_copy(
        update={
            "metrics": {
                "holdout": cand_report["metrics"],
                "compared_with": active_version,
                "decision": decision,
            }
        }
    )
    write_meta(candidate_dir, final_meta)
    registry.install(candidate_dir)
    promoted = passed or force
    superseded: str | None = None
    if promoted:
        reason = "retrain --force" if force and not passed else "retrain"
        with registry.lock():  # promote and rollback wait: nothing changes between the check and the switch
            superseded = activations.active(engine, cfg.station.name, registry).changes_from(baseline)
            if superseded is None:
                registry.activate(version, reason=reason)
                activations.record(engine, version, None, reason)
        if superseded is not None:
            promoted = False
            decision += f"; not activated: the active model changed during the retrain ({superseded})"
            log.warning(
                "retrain.not_activated", version=version, compared_with=active_version, changed=superseded
            )
    summary = {
        "version": version,
        "promoted": promoted,
        "superseded": superseded,
        "forced": force and not passed,
        "decision": decision,
        "candidate": cand_report["metrics"],
        "active": act_report["metrics"] if act_report else None,
        "active_version": active_version,
        "training": training,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info(
        "retrain.done",
        version=version,
        promoted=promoted,
        decision=decision,
        seconds=round(time.monotonic() - started, 1),
    )
    return Outcome(version, run_dir, promoted, decision, cand_report, act_report, superseded)


def _keep_with_version(version_dir: Path, run_dir: Path, holdout: list[labels.Labeled]) -> None:
    """The Keras history, and the holdout the gate compares on (content hash, label, where it was)."""
    if (run_dir / TRAINING_HISTORY_FILE).is_file():
        shutil.copyfile(run_dir / TRAINING_HISTORY_FILE, version_dir / TRAINING_HISTORY_FILE)
    with open(version_dir / HOLDOUT_FILE, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sha256", "label", "source", "path"])
        for item in sorted(holdout, key=lambda i: i.sha256):
            writer.writerow([item.sha256, "present" if item.label else "absent", item.source, item.path])


def _with_source_copies(
    rc: RetrainConfig,
    train: list[labels.Labeled],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int_],
    size: tuple[int, int],
    roi: tuple[float, float, float, float] | None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int_]]:
    """The training frames and their geometric copies, made at the source resolution (geometry.py)."""
    started = time.monotonic()
    total = len(train) * rc.augment.source_copies
    made = list(progress(source_copies(train, rc.augment, size, roi, rc.seed), "augmenting", total))
    log.info("augment.source_copies", images=len(made), seconds=round(time.monotonic() - started, 1))
    if not made:
        return x, y
    return (
        np.concatenate([x, np.stack([image for image, _ in made])]),
        np.concatenate([y, np.array([label for _, label in made], np.int_)]),
    )


def _synthesize(
    rc: RetrainConfig,
    art: Artwork,
    absent: list[labels.Labeled],
    size: tuple[int, int],
    roi: tuple[float, float, float, float] | None,
) -> tuple[npt.NDArray[np.float32], list[Box]]:
    started = time.monotonic()
    x = np.zeros((rc.symbol.count, *size, 1), np.float32)
    boxes: list[Box] = []
    made = synthesize(absent, art, rc.symbol, rc.symbol.count, size, roi, rc.seed)
    for i, (image, box) in enumerate(progress(made, "compositing", rc.symbol.count)):
        x[i] = image
        boxes.append(box)
    log.info(
        "symbol.composited",
        artwork=art.source,
        images=len(boxes),
        backgrounds=len(absent),
        seconds=round(time.monotonic() - started, 1),
    )
    return x[: len(boxes)], boxes
