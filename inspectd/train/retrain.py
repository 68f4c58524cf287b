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
from sqlalchemy import Engine

from inspectd.core import activations, drift, logs
from inspectd.core.config import Config
from inspectd.core.registry import (
    HOLDOUT_FILE,
    TRAINING_HISTORY_FILE,
    ModelMeta,
    ModelRegistry,
    Tiling,
    write_meta,
)
from inspectd.core.retrain_config import RetrainConfig
from inspectd.daemon.intake.decode import DecodeLimits
from inspectd.model.active import wanted
from inspectd.model.runtime import Inferencer, ModelLoadError, max_inputs_for, sigmoid
from inspectd.ops import labels
from inspectd.train.convert import Converted, convert, export_version
from inspectd.train.data.composite import Artwork, ArtworkError, load_artwork
from inspectd.train.data.dataset import Split, gather, split
from inspectd.train.evaluate import report
from inspectd.train.evaluate.assess import evaluate_items, load_registered
from inspectd.train.evaluate.gate import gate
from inspectd.train.fit.frames import Trained
from inspectd.train.inputs import AUTO_INPUT_MAX, auto_input_size, train_on
from inspectd.train.nets.backbones import check_local_weights
from inspectd.train.tf import keras, tensorflow

log = logs.get("inspectd.retrain")


@dataclass(frozen=True)
class Outcome:
    version: str
    run_dir: Path
    promoted: bool  # activated
    decision: str
    candidate: report.Report
    active: report.Report | None
    # the gate passed (or --force) but the active model changed during the run, how (the version is
    # installed, not activated: it was compared with a model that is no longer the active one)
    superseded: str | None = None


def calibrate_converted(
    trained: Trained, rc: RetrainConfig, size: tuple[int, int]
) -> tuple[Converted, tuple[float, float], float, dict[str, list[float]]]:
    """Convert (quantized as configured), then fit calibration and threshold on the converted network's
    validation logits: the scores the daemon will compute. Also the reference the daemon's drift gauges
    compare with: the binned calibrated scores of the validation frames, and the brightness and
    contrast of the validation inputs (core/drift.py)."""
    converted = convert(
        trained.model, size, rc.quantize, trained.representative, trained.check_x, trained.check_y
    )
    logits, labels = trained.frames(converted.logits)
    calibration, threshold = report.calibrate(labels, logits, rc.threshold_policy, rc.target_recall)
    a, b = calibration
    scores = sigmoid(np.float32(a) * logits + np.float32(b))
    x = trained.check_x.reshape(len(trained.check_x), -1)
    reference = drift.reference(
        {
            "score": [float(s) for s in scores],
            "brightness": [float(v) for v in x.mean(axis=1)],
            "contrast": [float(v) for v in x.std(axis=1)],
        }
    )
    return converted, calibration, threshold, reference


@dataclass(frozen=True)
class Run:
    """One retrain: its version name and folder, and what the candidate is compared with (the active
    version, and the activation state that must be unchanged when the candidate is activated)."""

    version: str
    run_dir: Path
    registry: ModelRegistry
    baseline: activations.Active
    active_version: str
    started: float


def retrain(
    cfg: Config, engine: Engine, data: Path | None, force: bool, overrides: dict[str, Any]
) -> Outcome:
    """Train, export, compare on the holdout, install, and promote if the gate passes (or ``force``)."""
    rc, art = _recipe(cfg.retrain, overrides)
    run = _begin(cfg, engine, rc)
    parts = split(
        gather(engine, cfg, data),
        rc.holdout_fraction,
        rc.validation_fraction,
        rc.seed,
        rc.min_per_class,
        cfg.decode.max_pixels,
    )
    if rc.input_size == 0:
        rc = rc.model_copy(update={"input_size": auto_input_size(parts.train, rc.tile, cfg.model.roi)})
        log.info("input_size.chosen", input_size=rc.input_size, max=AUTO_INPUT_MAX)
    log.info(
        "dataset.ready",
        **{f"{n}_{c}": v for n, counts in parts.counts().items() for c, v in counts.items()},
        fingerprint=parts.fingerprint()[:16],
    )
    limits = DecodeLimits(cfg.decode.max_pixels, cfg.decode.max_file_bytes)
    trained = train_on(rc, cfg.model.roi, parts, art, limits, run.run_dir)
    trained.model.save(run.run_dir / "model.keras")
    meta, training = _export(rc, run, trained, parts)
    candidate_dir = run.run_dir / "version"
    _keep_with_version(candidate_dir, run.run_dir, parts.holdout)
    cand_report, act_report, passed, decision = _compare(cfg, rc, run, meta, candidate_dir, parts, limits)
    final = {
        "holdout": cand_report.metrics.as_dict(),
        "compared_with": run.active_version,
        "decision": decision,
        "reference": meta.metrics.get("reference"),  # what the daemon's drift gauges compare with
    }
    write_meta(candidate_dir, meta.model_copy(update={"metrics": final}))
    run.registry.install(candidate_dir)
    promoted, superseded = _promote(engine, cfg, run, passed or force, force and not passed)
    if superseded is not None:
        decision += f"; not activated: the active model changed during the retrain ({superseded})"
    summary = {
        "version": run.version,
        "promoted": promoted,
        "superseded": superseded,
        "forced": force and not passed,
        "decision": decision,
        "candidate": cand_report.metrics.as_dict(),
        "active": act_report.metrics.as_dict() if act_report else None,
        "active_version": run.active_version,
        "training": training,
    }
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    seconds = round(time.monotonic() - run.started, 1)
    log.info("retrain.done", version=run.version, promoted=promoted, decision=decision, seconds=seconds)
    return Outcome(run.version, run.run_dir, promoted, decision, cand_report, act_report, superseded)


def _recipe(base: RetrainConfig, overrides: dict[str, Any]) -> tuple[RetrainConfig, Artwork | None]:
    """``[retrain]`` with the command line's overrides, and the symbol's artwork when there is one."""
    artwork = overrides.get("symbol")
    rc = base.model_copy(update={k: v for k, v in overrides.items() if v is not None and k != "symbol"})
    if artwork is not None:
        rc = rc.model_copy(update={"symbol": rc.symbol.model_copy(update={"artwork": artwork})})
    check_local_weights(rc.backbone, rc.pretrained, rc.weights.get(rc.backbone))
    art = load_artwork(rc.symbol.artwork) if rc.symbol.artwork is not None else None
    if art is not None and rc.tile is not None:
        raise ArtworkError("retrain.symbol: composited marks train whole frames; unset retrain.tile")
    return rc, art


def _begin(cfg: Config, engine: Engine, rc: RetrainConfig) -> Run:
    started = time.monotonic()
    tensorflow(threads=os.cpu_count() or 1)
    keras().utils.set_random_seed(rc.seed)
    version = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{rc.backbone.replace('_', '-')}"
    run_dir = cfg.paths.runs / f"retrain-{version}"
    run_dir.mkdir(parents=True)
    registry = ModelRegistry(cfg.paths.models)
    registry.ensure_active()  # a fresh install compares with the bundled model
    baseline = activations.active(engine, cfg.station.name, registry)
    active_version = wanted(cfg, engine, registry).version
    assert active_version is not None, "ensure_active leaves an active version"
    return Run(version, run_dir, registry, baseline, active_version, started)


def _export(rc: RetrainConfig, run: Run, trained: Trained, parts: Split) -> tuple[ModelMeta, dict[str, Any]]:
    """Convert, calibrate on the converted network, and write the candidate version folder."""
    size = (rc.input_size, rc.input_size)
    converted, calibration, threshold, reference = calibrate_converted(trained, rc, size)
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
        "seconds": round(time.monotonic() - run.started, 1),
        "parameters": int(trained.model.count_params()),
    }
    tiling = Tiling(tile=rc.tile, overlap=rc.tile_overlap) if rc.tile else None
    meta = export_version(
        converted,
        run.run_dir / "version",
        run.version,
        threshold,
        calibration,
        trained.samples,
        {"reference": reference},
        training,
        tiling,
    )
    return meta, training


def _compare(
    cfg: Config,
    rc: RetrainConfig,
    run: Run,
    meta: ModelMeta,
    candidate_dir: Path,
    parts: Split,
    limits: DecodeLimits,
) -> tuple[report.Report, report.Report | None, bool, str]:
    """The same holdout for both models, each through its own preprocessing size and threshold; the
    candidate with every check the daemon runs on this station, since it may be activated."""
    max_inputs = max_inputs_for(meta, cfg.model, cfg.batch.max_size)
    candidate = Inferencer.load(candidate_dir, 0, max_inputs, network="shipped")
    cand_report = evaluate_items(
        candidate, parts.holdout, limits, rc, run.run_dir / "holdout-candidate", cfg.model
    )
    act_report: report.Report | None = None
    try:
        current = load_registered(run.registry, run.active_version)
        act_report = evaluate_items(
            current, parts.holdout, limits, rc, run.run_dir / "holdout-active", cfg.model
        )
    except ModelLoadError as exc:
        log.warning("active_model.unusable", version=run.active_version, error=str(exc))
    passed, decision = gate(cand_report, act_report, rc.gate)
    if meta.float_model_sha256 is not None:  # a station may run either network: both must pass
        floating = Inferencer.load(candidate_dir, 0, max_inputs, network="float")
        float_report = evaluate_items(
            floating, parts.holdout, limits, rc, run.run_dir / "holdout-candidate-float", cfg.model
        )
        float_passed, float_decision = gate(float_report, act_report, rc.gate)
        passed = passed and float_passed
        decision = f"{decision}; its float network: {float_decision}"
    return cand_report, act_report, passed, decision


def _promote(engine: Engine, cfg: Config, run: Run, promote: bool, forced: bool) -> tuple[bool, str | None]:
    """Activate the installed candidate, unless the active model changed during the run: then it stays
    installed, not active (it was compared with a model that is no longer the active one)."""
    if not promote:
        return False, None
    reason = "retrain --force" if forced else "retrain"
    with run.registry.lock():  # promote and rollback wait: nothing changes between the check and the switch
        superseded = activations.active(engine, cfg.station.name, run.registry).changes_from(run.baseline)
        if superseded is None:
            run.registry.activate(run.version, reason=reason)
            activations.record(engine, run.version, None, reason)
            return True, None
    log.warning(
        "retrain.not_activated", version=run.version, compared_with=run.active_version, changed=superseded
    )
    return False, superseded


def _keep_with_version(version_dir: Path, run_dir: Path, holdout: list[labels.Labeled]) -> None:
    """The Keras history, and the holdout the gate compares on (content hash, label, where it was)."""
    if (run_dir / TRAINING_HISTORY_FILE).is_file():
        shutil.copyfile(run_dir / TRAINING_HISTORY_FILE, version_dir / TRAINING_HISTORY_FILE)
    with open(version_dir / HOLDOUT_FILE, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sha256", "label", "source", "path"])
        for item in sorted(holdout, key=lambda i: i.sha256):
            writer.writerow([item.sha256, "present" if item.label else "absent", item.source, item.path])
