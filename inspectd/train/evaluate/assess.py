"""Scoring a model version on labeled images as the daemon would score them (its view, tiles, threshold):
`inspectd eval`, and the holdout comparison of retrain's gate."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from inspectd.core.config import Config, ModelConfig
from inspectd.core.registry import ModelRegistry, RegistryError
from inspectd.core.retrain_config import RetrainConfig
from inspectd.core.tiles import view_for
from inspectd.daemon.intake.decode import DecodeLimits
from inspectd.model import active
from inspectd.model.runtime import Inferencer, ModelLoadError
from inspectd.ops import labels
from inspectd.train.data.dataset import NotEnoughLabels, folder_examples, gather, score_frames, split
from inspectd.train.evaluate import report


def load_registered(registry: ModelRegistry, version: str) -> Inferencer:
    """A registry version for evaluation (every core), its name and metadata checked; ModelLoadError."""
    try:
        return Inferencer.load(registry.version_dir(version), version=version)
    except RegistryError as exc:
        raise ModelLoadError(str(exc)) from None


def evaluate_version(
    cfg: Config, engine: Engine, version: str | None, data: Path | None
) -> tuple[report.Report, Path]:
    """`inspectd eval`: a version (default: the active one) on a labeled folder, or on the holdout split of
    the labeled images (the split retrain uses)."""
    registry = ModelRegistry(cfg.paths.models)
    version = version or active.wanted(cfg, engine, registry).version
    if version is None:
        raise ModelLoadError("the registry has no active version; name one")
    inferencer = load_registered(registry, version)
    rc = cfg.retrain
    if data is not None:
        items = folder_examples(data, cfg.watch.extensions)
        where = str(data)
    else:
        items = split(
            gather(engine, cfg, None),
            rc.holdout_fraction,
            rc.validation_fraction,
            rc.seed,
            2,
            cfg.decode.max_pixels,
        ).holdout
        where = "holdout"
    if len({i.label for i in items}) < 2:
        raise NotEnoughLabels(f"{where}: need labeled images of both classes to evaluate")
    limits = DecodeLimits(cfg.decode.max_pixels, cfg.decode.max_file_bytes)
    out = cfg.paths.runs / f"eval-{version}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    return evaluate_items(inferencer, items, limits, rc, out, cfg.model, data=where), out


def evaluate_items(
    inferencer: Inferencer,
    items: list[labels.Labeled],
    limits: DecodeLimits,
    rc: RetrainConfig,
    out: Path,
    model_cfg: ModelConfig,
    data: str | None = None,
) -> report.Report:
    """Score ``items`` per frame, as the daemon would, and write the report and plots to ``out``."""
    view = view_for(inferencer.meta, model_cfg)
    scores, y, kept, _ = score_frames(inferencer, items, limits, view, model_cfg.tile_reduce)
    meta = inferencer.meta
    policy, target = rc.threshold_policy, rc.target_recall
    result = report.build_report(
        inferencer.version, meta.threshold, y, scores, kept, policy, target, data=data
    )
    report.write(out, result, y, scores)
    return result
