"""`inspectd retrain`: labeled images in, a new registry version out, promoted only if no worse."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from inspectd import activations, labels, logs
from inspectd.config import Config, GateConfig, ModelConfig, RetrainConfig
from inspectd.decode import DecodeLimits
from inspectd.infer import Inferencer, ModelLoadError, max_inputs_for
from inspectd.registry import ModelRegistry, RegistryError, Tiling, write_meta
from inspectd.tiles import View, region, view_for
from inspectd.train import report
from inspectd.train.dataset import NotEnoughLabels, Split, folder_examples, load, score_frames, split
from inspectd.train.export import Converted, convert, export_version
from inspectd.train.fit import Trained, train_arrays
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


def gate(candidate: dict[str, Any], active: dict[str, Any] | None, rules: GateConfig) -> tuple[bool, str]:
    if active is None:
        return True, "no active model to compare with"
    c, a = candidate["metrics"], active["metrics"]
    recall_drop = a["recall"] - c["recall"]
    auc_drop = (a["roc_auc"] or 0.0) - (c["roc_auc"] or 0.0)
    facts = (
        f"recall {c['recall']:.4f} vs {a['recall']:.4f}, ROC-AUC {c['roc_auc']:.4f} vs {a['roc_auc']:.4f} "
        f"(allowed drops {rules.max_recall_drop}, {rules.max_roc_auc_drop})"
    )
    if recall_drop > rules.max_recall_drop + 1e-12 or auc_drop > rules.max_roc_auc_drop + 1e-12:
        return False, "candidate is worse than the active model: " + facts
    return True, "candidate is no worse than the active model: " + facts


def gather(engine: Engine, cfg: Config, data: Path | None) -> list[labels.Labeled]:
    sync = labels.sync_folders(engine, cfg.paths.labels, cfg.watch.extensions, by="label-folder")
    log.info(
        "labels.synced",
        linked=sync.linked,
        added=sync.added,
        relabeled=sync.relabeled,
        skipped=len(sync.skipped),
    )
    items = {i.sha256: i for i in labels.labeled_examples(engine)}
    if data is not None:
        for item in folder_examples(data, cfg.watch.extensions):
            items.setdefault(item.sha256, item)
    return list(items.values())


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
    rc = cfg.retrain.model_copy(update={k: v for k, v in overrides.items() if v is not None})
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
        x, y, _ = load(parts.train, view, limits)
        xv, yv, _ = load(parts.validation, view, limits)
        trained = train_arrays(rc, x, y, xv, yv, run_dir)
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

    # the same holdout for both models, each through its own preprocessing size and threshold; the
    # candidate with every check the daemon runs on this station, since it may be activated below
    candidate = Inferencer.load(candidate_dir, 0, max_inputs_for(meta, cfg.model, cfg.batch.max_size))
    cand_report = _evaluate_items(
        candidate, parts.holdout, limits, rc, run_dir / "holdout-candidate", cfg.model
    )
    act_report: dict[str, Any] | None = None
    try:
        active = _load_registered(registry, active_version)
        act_report = _evaluate_items(active, parts.holdout, limits, rc, run_dir / "holdout-active", cfg.model)
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


def _load_registered(registry: ModelRegistry, version: str) -> Inferencer:
    """A registry version for evaluation (every core), its name and metadata checked; ModelLoadError."""
    try:
        return Inferencer.load(registry.version_dir(version), version=version)
    except RegistryError as exc:
        raise ModelLoadError(str(exc)) from None


def evaluate_version(
    cfg: Config, engine: Engine, version: str | None, data: Path | None
) -> tuple[dict[str, Any], Path]:
    """`inspectd eval`: a version (default: the active one) on a labeled folder, or on the holdout split of
    the labeled images (the split retrain uses)."""
    registry = ModelRegistry(cfg.paths.models)
    version = version or activations.wanted(cfg.model, engine, cfg.station.name, registry).version
    if version is None:
        raise ModelLoadError("the registry has no active version; name one")
    inferencer = _load_registered(registry, version)
    rc = cfg.retrain
    if data is not None:
        items = folder_examples(data, cfg.watch.extensions)
        where = str(data)
    else:
        items = split(
            gather(engine, cfg, None), rc.holdout_fraction, rc.validation_fraction, rc.seed, 2
        ).holdout
        where = "holdout"
    if len({i.label for i in items}) < 2:
        raise NotEnoughLabels(f"{where}: need labeled images of both classes to evaluate")
    limits = DecodeLimits(cfg.decode.max_pixels, cfg.decode.max_file_bytes)
    out = cfg.paths.runs / f"eval-{version}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    return _evaluate_items(inferencer, items, limits, rc, out, cfg.model, data=where), out


def _evaluate_items(
    inferencer: Inferencer,
    items: list[labels.Labeled],
    limits: DecodeLimits,
    rc: RetrainConfig,
    out: Path,
    model_cfg: ModelConfig,
    data: str | None = None,
) -> dict[str, Any]:
    """Score ``items`` per frame, as the daemon would, and write the report and plots to ``out``."""
    view = view_for(inferencer.meta, model_cfg.roi, model_cfg.tile, model_cfg.tile_overlap)
    scores, y, kept, _ = score_frames(inferencer, items, limits, view, model_cfg.tile_reduce)
    result = report.build_report(
        inferencer.version, inferencer.meta.threshold, y, scores, kept, rc.threshold_policy, rc.target_recall
    )
    if data is not None:
        result["data"] = data
    report.write(out, result, y, scores)
    return result
