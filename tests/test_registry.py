"""The model registry on real files and a real SQLite: version names, file modes, durability, the lock."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import pytest
import sqlalchemy as sa

from inspectd.core import activations, db
from inspectd.core.registry import (
    ModelRegistry,
    RegistryError,
    bundled_model_dir,
    check_version,
    read_meta,
)
from inspectd.core.retrain_config import RetrainConfig
from inspectd.model.runtime import Inferencer, ModelLoadError
from tests.conftest import Workspace

BUNDLED = read_meta(bundled_model_dir()).version


def copy_version(registry: ModelRegistry, new: str, named: str | None = None) -> Path:
    """A copy of the bundled version in ``versions/new``, its metadata naming ``named`` (default: new)."""
    target = registry.versions / new
    shutil.copytree(registry.version_dir(registry.ensure_active()), target)
    meta = json.loads((target / "metadata.json").read_text())
    meta["version"] = named or new
    (target / "metadata.json").write_text(json.dumps(meta))
    return target


def promotions(ws: Workspace) -> list[str]:
    engine = sa.create_engine(ws.db_url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text("SELECT version FROM model_activations ORDER BY id"))]
    finally:
        engine.dispose()


# --- version names ------------------------------------------------------------------------------------


BAD_NAMES = [
    "../../../../outside/evil",
    "..",
    ".",
    "a/b",
    "/etc",
    "",
    ".hidden",
    "-dash",
    "a..b",
    "v1\n",
    "v 1",
    "v1/",
    "x" * 65,
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_version_name_is_never_a_path(tmp_path: Path, name: str) -> None:
    registry = ModelRegistry(tmp_path / "models")
    with pytest.raises(RegistryError, match="invalid version name"):
        registry.version_dir(name)
    with pytest.raises(RegistryError, match="invalid version name"):
        registry.activate(name)


def test_the_names_retrain_and_the_bundled_model_make_are_valid() -> None:
    backbones = get_args(RetrainConfig.model_fields["backbone"].annotation)
    assert backbones
    for backbone in backbones:  # retrain.py: f"{now:%Y%m%d-%H%M%S}-{backbone with - for _}"
        assert check_version(f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{backbone.replace('_', '-')}")
    assert check_version(BUNDLED) == BUNDLED
    assert check_version("bundled-2") and check_version("v1.2_3") and check_version("x" * 64)


def test_promote_refuses_a_path_outside_the_registry(upgraded: Workspace) -> None:
    registry = ModelRegistry(upgraded.models)
    registry.ensure_active()
    outside = upgraded.root / "var" / "outside" / "evil"  # versions/../../outside/evil
    shutil.copytree(registry.version_dir(BUNDLED), outside)
    meta = json.loads((outside / "metadata.json").read_text())
    meta["version"] = "evil"
    (outside / "metadata.json").write_text(json.dumps(meta))
    assert (registry.versions / "../../outside/evil").resolve() == outside.resolve()

    result = upgraded.cli("promote", "../../outside/evil", check=False)
    assert result.returncode != 0
    assert "invalid version name" in result.stderr and "Traceback" not in result.stderr
    assert registry.active_version() == BUNDLED
    assert promotions(upgraded) == []


def test_a_folder_whose_metadata_names_another_version_is_refused(upgraded: Workspace) -> None:
    registry = ModelRegistry(upgraded.models)
    folder = copy_version(registry, "other-1", named=BUNDLED)  # rows would say bundled-2
    result = upgraded.cli("promote", "other-1", check=False)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if "other-1" in line]
    assert line.startswith("Error: not promoted: ") and f"names version '{BUNDLED}'" in line, line
    assert registry.active_version() == BUNDLED and promotions(upgraded) == []

    with pytest.raises(RegistryError, match="names version"):
        registry.activate("other-1")
    with pytest.raises(ModelLoadError, match="names version"):
        Inferencer.load(folder, version="other-1")
    assert [m.version for m in registry.list_versions()] == [BUNDLED]


def test_promote_and_rollback_of_good_versions(upgraded: Workspace) -> None:
    registry = ModelRegistry(upgraded.models)
    copy_version(registry, "second-1")
    assert "active model: second-1" in upgraded.cli("promote", "second-1").stdout
    assert registry.active_version() == "second-1"
    assert "active model: " + BUNDLED in upgraded.cli("rollback").stdout
    assert registry.active_version() == BUNDLED
    assert promotions(upgraded) == ["second-1", BUNDLED]


def test_rollback_refuses_a_version_the_daemon_would_refuse(upgraded: Workspace) -> None:
    registry = ModelRegistry(upgraded.models)
    copy_version(registry, "old-1")
    registry.activate("old-1")
    registry.activate(BUNDLED)
    meta = json.loads((registry.versions / "old-1" / "metadata.json").read_text())
    meta["version"] = "someone-else"  # changed by hand since
    (registry.versions / "old-1" / "metadata.json").write_text(json.dumps(meta))

    result = upgraded.cli("rollback", check=False)
    assert result.returncode == 1 and "not rolled back" in result.stderr and "names version" in result.stderr
    assert registry.active_version() == BUNDLED and promotions(upgraded) == []


def test_activations_refuse_an_invalid_version_name(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    db.upgrade(engine)
    with pytest.raises(RegistryError):
        activations.record(engine, "../evil", None, "promote")
    assert activations.latest(engine, "any") is None


# --- modes and durability -----------------------------------------------------------------------------


@pytest.fixture
def umask() -> Iterator[Any]:
    previous = os.umask(0o022)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_registry_files_get_the_modes_of_the_umask(tmp_path: Path, umask: Any, mask: int) -> None:
    umask(mask)
    registry = ModelRegistry(tmp_path / "models")
    registry.ensure_active()  # installs and activates the bundled model
    copy = copy_version(registry, "source-1")  # a training run's folder, say, elsewhere
    shutil.move(str(copy), tmp_path / "run")
    for name in ("model.tflite", "model-float.tflite", "metadata.json", "selftest.npz"):
        (tmp_path / "run" / name).chmod(0o600)  # the source's own modes must not travel
    registry.install(tmp_path / "run")
    registry.activate("source-1")

    dirs = [registry.root, registry.versions, registry.versions / BUNDLED, registry.versions / "source-1"]
    files = [
        registry.root / "active",
        registry.root / "history.jsonl",
        *(registry.versions / BUNDLED).iterdir(),
        *(registry.versions / "source-1").iterdir(),
    ]
    assert len(files) == 10  # active, history, and 4 files (2 networks) in each version
    assert {str(d): oct(mode(d)) for d in dirs} == {str(d): oct(0o777 & ~mask) for d in dirs}
    assert {str(f): oct(mode(f)) for f in files} == {str(f): oct(0o666 & ~mask) for f in files}
    assert not list(registry.root.rglob(".*"))  # no temporary left
    with registry.lock():
        assert mode(registry.root / ".lock") == 0o666 & ~mask


class Recorder:
    """os.fsync and os.replace, recorded in order with the paths they were called on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            path = str(Path(f"/proc/self/fd/{fd}").readlink())
            kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
            self.events.append((f"fsync-{kind}", path, ""))
            real_fsync(fd)

        def replace(src: Any, dst: Any, **kwargs: Any) -> None:
            self.events.append(("replace", str(src), str(dst)))
            real_replace(src, dst, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def index(self, kind: str, path: str, after: int = -1) -> int:
        """The first such call after the event at ``after``."""
        for i, event in enumerate(self.events):
            if i > after and event == (kind, path, ""):
                return i
        raise AssertionError(f"no {kind} {path} after event {after} in {self.events}")


def test_install_and_activate_are_flushed_before_and_after_their_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    recorder = Recorder(monkeypatch)
    ModelRegistry(root).ensure_active()
    events = recorder.events
    versions, target = str(root / "versions"), str(root / "versions" / BUNDLED)

    # install: every file of the staging folder, then the folder, then the rename, then its parent
    publish = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == target)
    staging = events[publish][1]
    assert Path(staging).parent == root / "versions" and Path(staging).name.startswith(".")
    for name in ("model.tflite", "metadata.json", "selftest.npz"):
        assert recorder.index("fsync-file", f"{staging}/{name}") < publish
    assert recorder.index("fsync-dir", staging) < publish
    assert recorder.index("fsync-dir", versions, after=publish)

    # activate: the temporary pointer, its rename over `active`, the registry folder
    swap = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(root / "active"))
    pointer = events[swap][1]
    assert recorder.index("fsync-file", pointer) < swap
    assert recorder.index("fsync-dir", str(root), after=swap)
    assert ("fsync-file", str(root / "history.jsonl"), "") in events
    assert (root / "active").read_text() == BUNDLED + "\n"


def test_a_failed_copy_leaves_no_partial_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ModelRegistry(tmp_path / "models")
    registry.ensure_active()
    source = copy_version(registry, "partial-1")
    shutil.move(str(source), tmp_path / "run")
    real_fsync = os.fsync
    calls = []

    def failing(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match="No space"):
        registry.install(tmp_path / "run")
    monkeypatch.undo()
    assert sorted(p.name for p in registry.versions.iterdir()) == [BUNDLED]


# --- the lock and the activation state ----------------------------------------------------------------


def test_the_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    held, order = threading.Event(), []

    def second() -> None:
        held.wait(5)
        with ModelRegistry(tmp_path / "models").lock():
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with registry.lock():
        held.set()
        time.sleep(0.3)
        order.append("first")
    thread.join(5)
    assert order == ["first", "second"]


def test_the_active_state_notices_a_promotion_anywhere(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    db.upgrade(engine)
    registry = ModelRegistry(tmp_path / "models")
    registry.ensure_active()
    copy_version(registry, "second-1")
    before = activations.active(engine, "line-1", registry)
    assert before == activations.Active(BUNDLED, None)
    assert activations.active(engine, "line-1", registry).changes_from(before) is None

    activations.record(engine, "second-1", "line-2", "promote")  # another station only: not ours
    assert activations.active(engine, "line-1", registry).changes_from(before) is None
    registry.activate("second-1")
    assert activations.active(engine, "line-1", registry).changes_from(before) == (
        f"registry pointer {BUNDLED} -> second-1"
    )
    registry.activate(BUNDLED)
    activations.record(engine, "second-1", None, "promote")  # every station, from another machine
    assert activations.active(engine, "line-1", registry).changes_from(before) == (
        "database promotion (none) -> second-1"
    )
