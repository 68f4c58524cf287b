"""Heatmaps for the review page: ``inspectd explain``'s picture of an archived image, from a model of the
web layer's own (loaded on first use, reloaded when the station's version changes), so the pipeline's
model is never called from an HTTP thread. One picture at a time (the runtime is not thread-safe)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from inspectd.core import logs
from inspectd.core.config import Config
from inspectd.core.registry import ModelRegistry, RegistryError
from inspectd.daemon.intake.decode import DecodeLimits
from inspectd.model import active
from inspectd.model.active import ActiveModel

log = logs.get("inspectd.web")


class Explainer:
    def __init__(self, cfg: Config, engine: Engine) -> None:
        self.cfg = cfg
        self.engine = engine
        self.limits = DecodeLimits(cfg.decode.max_pixels, cfg.decode.max_file_bytes)
        self._model: ActiveModel | None = None
        self._lock = threading.Lock()

    def png(self, path: Path) -> bytes | None:
        """The picture as PNG bytes; None when the image or the model cannot be used (logged)."""
        from inspectd.ops.explain import ExplainError, explain

        with self._lock:
            model = self._current()
            if model is None:
                return None
            with tempfile.TemporaryDirectory(prefix="inspectd-explain-") as tmp:
                out = Path(tmp) / "explain.png"
                try:
                    explain(path, model, self.limits, out)
                except (ExplainError, OSError) as exc:
                    log.warning("explain.failed", file=path.name, error=str(exc))
                    return None
                return out.read_bytes()

    def _current(self) -> ActiveModel | None:
        registry = ModelRegistry(self.cfg.paths.models)
        try:
            wanted = active.wanted(self.cfg, self.engine, registry).version
            if self._model is None or self._model.version != wanted:
                self._model = active.resolve(self.cfg, self.engine, registry)
        except (active.ModelLoadError, RegistryError, SQLAlchemyError, OSError) as exc:
            log.warning("explain.model_unavailable", error=str(exc))
            return self._model
        return self._model
