"""Start-up failures map to a documented exit code (daemon/startup.py); the end-to-end cases with a real
daemon are in test_faults.py (a listen address in use or not here, an unusable folder)."""

from __future__ import annotations

import errno

import pytest
from sqlalchemy.exc import OperationalError

from inspectd.core.config import ConfigError
from inspectd.core.db import SchemaMismatch
from inspectd.core.registry import RegistryError
from inspectd.daemon.http import HttpStartError
from inspectd.daemon.startup import EX_CONFIG, EX_SOFTWARE, EX_UNAVAILABLE, StartupError, startup_error
from inspectd.model.runtime import ModelLoadError

CASES = {
    "listen address in use": (HttpStartError("127.0.0.1:9108: address in use"), EX_CONFIG),
    "a model that cannot be used": (ModelLoadError("checksum mismatch"), EX_CONFIG),
    "no active version": (RegistryError("no active version in the registry"), EX_CONFIG),
    "a folder that cannot be made": (
        NotADirectoryError(errno.ENOTDIR, "Not a directory", "/x/in"),
        EX_CONFIG,
    ),
    "permission denied": (PermissionError(errno.EACCES, "Permission denied", "/srv"), EX_CONFIG),
    "the inotify watch limit": (OSError(errno.ENOSPC, "inotify watch limit reached"), EX_UNAVAILABLE),
    "the inotify instance limit": (OSError(errno.EMFILE, "inotify instance limit reached"), EX_UNAVAILABLE),
    "the database cannot say which model": (
        OperationalError("SELECT", {}, Exception("gone")),
        EX_UNAVAILABLE,
    ),
    "a schema behind or ahead": (SchemaMismatch("the database schema is behind"), EX_CONFIG),
    "an empty token file": (ConfigError("http.token_file: holds no token"), EX_CONFIG),
    "anything else": (KeyError("surprise"), EX_SOFTWARE),
    "already a startup error": (StartupError("stopped while waiting for the database", 0), 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_startup_error_codes(case: str) -> None:
    exc, code = CASES[case]
    error = startup_error(exc)
    assert error.exit_code == code
    assert "\n" not in str(error) and str(error)
