"""The daemon's model: the one it serves, the version it should serve (polled), and the switch.

A version that cannot be loaded at a reload is refused and the running one keeps serving; the pointer
is remembered, so a refused version is not tried again until the wanted version changes (or SIGHUP).
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from inspectd.core import activations, db, logs
from inspectd.core.config import Config
from inspectd.core.registry import ModelRegistry, RegistryError
from inspectd.daemon.health import Health
from inspectd.daemon.metrics import Metrics
from inspectd.model import active
from inspectd.model.active import ActiveModel
from inspectd.model.choice import network_name
from inspectd.model.runtime import ModelLoadError

log = logs.get("inspectd.daemon")


class Models:
    def __init__(self, config: Config, registry: ModelRegistry, metrics: Metrics, health: Health) -> None:
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.health = health
        self._pointer: str | None = None  # the version last loaded or refused

    def start(self, engine: Engine) -> ActiveModel:
        """The active model at start-up. ModelLoadError, RegistryError, OSError, SQLAlchemyError."""
        try:
            model = active.resolve(self.config, engine, self.registry)
        except (ModelLoadError, RegistryError):
            self.metrics.model_failures.inc()
            raise
        except OSError as exc:
            self.metrics.model_failures.inc()
            raise ModelLoadError(str(exc)) from None
        self._pointer = model.version
        log.info("model.selected", version=model.version, source=model.source)
        self._serving(model)
        return model

    def poll(self, engine: Engine, current: ActiveModel, forced: bool) -> ActiveModel | None:
        """The model to switch to, when the wanted version changed (or ``forced``) and it loads."""
        try:
            wanted = active.wanted(self.config, engine, self.registry)
        except SQLAlchemyError as exc:
            log.warning("model.poll_failed", error=db.brief(exc))
            return None
        except (RegistryError, OSError, ValueError) as exc:  # a pointer file edited by hand, unreadable
            log.error("model.poll_failed", error=" ".join(str(exc).split()))
            return None
        if forced or wanted.version != self._pointer:
            return self.reload(wanted, current)
        return None

    def reload(self, wanted: activations.Wanted, current: ActiveModel) -> ActiveModel | None:
        version = wanted.version
        self._pointer = version
        try:
            if version is None:
                raise RegistryError("no active version in the registry")
            model = active.load(self.registry, version, self.config, wanted.source)
        except (ModelLoadError, RegistryError, OSError, ValueError, RuntimeError) as exc:
            self.metrics.model_failures.inc()
            self.metrics.model_ok.set(0)
            log.error("model.reload_refused", version=version, error=str(exc), keeping=current.version)
            return None
        self._serving(model)
        log.info("model.reloaded", version=model.version, previous=current.version, source=wanted.source)
        return model

    def _serving(self, model: ActiveModel) -> None:
        self.health.model = True
        self.metrics.model_ok.set(1)
        self.metrics.model.info(
            {
                "version": model.version,
                "threshold": f"{model.meta.threshold:.4f}",
                "input_size": "x".join(map(str, model.runtime.input_size)),
                "network": network_name(model.runtime.network),
                "network_reason": model.runtime.choice.reason,
            }
        )
        log.info(
            "model.network",
            version=model.version,
            network=model.runtime.network,
            reason=model.runtime.choice.reason,
            ms_per_input=model.runtime.choice.ms_per_input,
        )
