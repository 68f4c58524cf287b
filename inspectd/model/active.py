"""The station's active model: one object for the network, how it looks at a frame (its view), the
threshold and the tile reduce the station uses; and the one sequence that finds the wanted version and
loads it, for the daemon, the command line (eval, explain, review, promote, rollback) and retrain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from inspectd.core import activations
from inspectd.core.config import Config, ModelConfig
from inspectd.core.records import Decoded, Rejected, Scored
from inspectd.core.registry import ModelMeta, ModelRegistry, RegistryError
from inspectd.core.tiles import View, view_for
from inspectd.model.runtime import Inferencer, ModelLoadError, load_version


@dataclass(frozen=True, slots=True)
class ActiveModel:
    runtime: Inferencer
    cfg: ModelConfig  # the station's [model]: threshold override, ROI, tiling, reduce
    source: str = ""  # why this version: activations.Wanted.source

    @property
    def version(self) -> str:
        return self.runtime.version

    @property
    def meta(self) -> ModelMeta:
        return self.runtime.meta

    @property
    def view(self) -> View:
        return view_for(self.runtime.meta, self.cfg)

    def classify(self, images: Sequence[Decoded]) -> list[Scored | Rejected]:
        return list(self.runtime.classify(list(images), self.cfg.threshold, self.cfg.tile_reduce))


def wanted(cfg: Config, engine: Engine, registry: ModelRegistry) -> activations.Wanted:
    """Which version this station should run (a station's own promotion, the database's, the registry's
    pointer). Raises SQLAlchemyError when the database holds the answer and cannot be asked."""
    return activations.wanted(cfg.model, engine, cfg.station.name, registry)


def load(registry: ModelRegistry, version: str, cfg: Config, source: str = "") -> ActiveModel:
    """``version`` with every check the daemon runs before it serves it on this station; ModelLoadError."""
    return ActiveModel(load_version(registry, version, cfg.model, cfg.batch.max_size), cfg.model, source)


def resolve(cfg: Config, engine: Engine, registry: ModelRegistry, version: str | None = None) -> ActiveModel:
    """The model this station runs (or ``version``), loaded as the daemon loads it. A fresh install's
    registry gets the bundled model first. ModelLoadError, RegistryError, SQLAlchemyError."""
    registry.ensure_active()
    source = "requested"
    if version is None:
        chosen = wanted(cfg, engine, registry)
        if chosen.version is None:
            raise RegistryError("no active version in the registry")
        version, source = chosen.version, chosen.source
    return load(registry, version, cfg, source)


__all__ = ["ActiveModel", "ModelLoadError", "load", "resolve", "wanted"]
