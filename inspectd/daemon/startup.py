"""Start-up failures: one line naming the cause, and an exit code systemd can act on (sysexits.h).

- 78 EX_CONFIG: restarting cannot fix it (bad config, schema behind or ahead, an unusable model, a folder
  that cannot be made, a listen address that is in use or not on this machine). The unit does not
  restart on it (RestartPreventExitStatus=78).
- 69 EX_UNAVAILABLE: a resource that may come back (the database cannot say which model to run, the
  inotify limits are reached): restarted.
- 70 EX_SOFTWARE: anything unexpected: restarted.
"""

from __future__ import annotations

import errno

from sqlalchemy.exc import SQLAlchemyError

from inspectd.core.config import EX_CONFIG, ConfigError
from inspectd.core.db import SchemaMismatch
from inspectd.core.registry import RegistryError
from inspectd.daemon.http import HttpStartError
from inspectd.model.runtime import ModelLoadError

EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
# the inotify limits (max_user_watches, max_user_instances) or the open-file limit: other processes may
# release what they hold, so a restart may help
_RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM})

__all__ = ["EX_CONFIG", "EX_SOFTWARE", "EX_UNAVAILABLE", "StartupError", "startup_error"]


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def os_error(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def startup_error(exc: BaseException) -> StartupError:
    """The StartupError for an exception raised while starting."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, HttpStartError | ConfigError | SchemaMismatch):
        return StartupError(str(exc), EX_CONFIG)
    if isinstance(exc, ModelLoadError | RegistryError):
        return StartupError(f"the active model cannot be used: {exc}", EX_CONFIG)
    if isinstance(exc, SQLAlchemyError):
        return StartupError(f"cannot read the model promotions: {' '.join(str(exc).split())}", EX_UNAVAILABLE)
    if isinstance(exc, OSError):
        code = EX_UNAVAILABLE if exc.errno in _RESOURCE_ERRNOS else EX_CONFIG
        return StartupError(os_error(exc), code)
    return StartupError(f"{type(exc).__name__}: {exc}", EX_SOFTWARE)
