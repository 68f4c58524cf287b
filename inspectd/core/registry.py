"""Model registry: a folder of immutable versions and a pointer to the active one.

(Over 300 lines on purpose: the metadata schema, the checks a version must pass and the atomic pointer
switch are one contract, read together.)

    <models>/versions/<version>/model.tflite     the network, outputs one logit per image
    <models>/versions/<version>/metadata.json    ModelMeta below
    <models>/versions/<version>/selftest.npz     inputs and the scores they must reproduce
    <models>/active                              the active version's id (replaced atomically)
    <models>/history.jsonl                       every activation, appended
    <models>/.lock                               held while the active version is compared and changed

A version never changes once written; activating one is a single atomic rename. Both survive a power cut:
files are written under a temporary name and flushed (``fsync``), then renamed into place, then the folder
holding them is flushed. Everything is created with the modes the umask gives (0666/0777 less the umask),
so a registry written by one user (``inspectd promote``) stays readable by the service's.

A version's name is its folder's name and its metadata's ``version``: ``VERSION_PATTERN``, never a path.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MODEL_FILE = "model.tflite"
# a quantized version also ships its float network, checked as the quantized one is: each CPU runs the
# faster of the two whose scores agree (model/runtime.py); int8 pays off only with fast int8 dot products
FLOAT_MODEL_FILE = "model-float.tflite"
META_FILE = "metadata.json"
SELFTEST_FILE = "selftest.npz"
# what retrain keeps with a version: the Keras history (a row per epoch), and the holdout images the gate
# compared on (so that its set can be rebuilt)
TRAINING_HISTORY_FILE = "history.csv"
HOLDOUT_FILE = "holdout.csv"
VERSION_FILES = (
    MODEL_FILE,
    FLOAT_MODEL_FILE,
    META_FILE,
    SELFTEST_FILE,
    TRAINING_HISTORY_FILE,
    HOLDOUT_FILE,
)
ACTIVE_FILE = "active"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = ".lock"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # matched whole (``$`` would allow a "\n")


Quantize = Literal["none", "dynamic", "int8"]  # how a version's network stores its weights


class Calibration(BaseModel):
    """score = sigmoid(a * logit + b): Platt scaling fitted on validation data."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    a: float = 1.0
    b: float = 0.0


class Tiling(BaseModel):
    """The version was trained on tiles: the daemon cuts frames the same way (inspectd/core/tiles.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tile: int = Field(ge=8)  # tile side in frame pixels
    overlap: float = Field(default=0.25, ge=0, lt=1)


class ModelMeta(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)  # newer writers may add fields

    version: str = Field(pattern=VERSION_PATTERN)
    input_size: tuple[int, int]  # (height, width)
    threshold: float = Field(ge=0, le=1)
    calibration: Calibration = Calibration()
    tiling: Tiling | None = None  # None: the model sees the whole frame (or ROI) resized to its input
    quantization: Quantize = "none"  # how the network's weights are stored
    created_at: datetime
    model_sha256: str
    float_model_sha256: str | None = None  # the float network a quantized version ships beside it
    metrics: dict[str, Any] = {}
    training: dict[str, Any] = {}

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if ".." in value:
            raise ValueError("a version name cannot contain '..'")
        return value


class RegistryError(Exception):
    """A version is missing, malformed, or cannot be activated."""


def check_version(version: str) -> str:
    """``version`` if it is a valid version name (a folder name, never a path), else RegistryError."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version) or ".." in version:
        raise RegistryError(
            f"invalid version name {version!r}: 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, no '..'"
        )
    return version


def bundled_model_dir() -> Path:
    return Path(str(files("inspectd"))) / "bundled_model"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_meta(version_dir: Path, version: str | None = None) -> ModelMeta:
    """The checked metadata of a version folder; ``version``: the name it must have (a registry folder's
    name), refused when its metadata names another one (its rows would carry the wrong version)."""
    try:
        meta = ModelMeta.model_validate_json((version_dir / META_FILE).read_bytes())
    except FileNotFoundError:
        raise RegistryError(f"{version_dir}: no {META_FILE}") from None
    except ValidationError as exc:
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RegistryError(f"{version_dir / META_FILE}: invalid metadata: {reason}") from None
    if version is not None and meta.version != version:
        raise RegistryError(
            f"{version_dir}: its metadata names version {meta.version!r}, not {version!r} (its folder name)"
        )
    model = version_dir / MODEL_FILE
    if not model.is_file():
        raise RegistryError(f"{version_dir}: no {MODEL_FILE}")
    if file_sha256(model) != meta.model_sha256:
        raise RegistryError(f"{model}: checksum does not match metadata (file changed or corrupt)")
    if meta.float_model_sha256 is not None:
        floating = version_dir / FLOAT_MODEL_FILE
        if not floating.is_file():
            raise RegistryError(f"{version_dir}: no {FLOAT_MODEL_FILE}, which its metadata declares")
        if file_sha256(floating) != meta.float_model_sha256:
            raise RegistryError(f"{floating}: checksum does not match metadata (file changed or corrupt)")
    return meta


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new name in it) to disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(folder: Path) -> None:
    """``folder`` and its missing parents (umask modes), each new name flushed into its parent."""
    if folder.is_dir():
        return
    make_dirs(folder.parent)
    try:
        folder.mkdir(mode=0o777)
    except FileExistsError:
        return
    fsync_dir(folder.parent)


def _temporary(folder: Path, prefix: str) -> Path:
    return folder / f".{prefix}.{secrets.token_hex(6)}"


def write_durably(target: Path, content: bytes) -> None:
    """``target`` holds ``content``, or what it held before, whatever a crash or power cut interrupts: a
    temporary file (umask modes), flushed, renamed over ``target``, then the folder flushed."""
    tmp = _temporary(target.parent, target.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def _copy_flushed(source: Path, target: Path) -> None:
    """A new file ``target`` (umask modes, not the source's) with ``source``'s bytes, flushed to disk."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "wb") as out, source.open("rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())


def _open_lock(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        pass
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # another user's lock file (flock needs no write)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.EROFS):
            return None
        raise


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = root / "versions"

    def version_dir(self, version: str) -> Path:
        """The folder of ``version``; RegistryError for a name that is not a version name (``..``, a
        path), so that no name can reach outside ``versions/``."""
        return self.versions / check_version(version)

    def read_meta(self, version: str) -> ModelMeta:
        """A version's checked metadata, which must name the version its folder is named after."""
        return read_meta(self.version_dir(version), version)

    def list_versions(self) -> list[ModelMeta]:
        metas = []
        for child in sorted(self.versions.glob("*")) if self.versions.is_dir() else []:
            try:
                metas.append(self.read_meta(child.name))
            except RegistryError:  # a staging folder, a stray or damaged one: not a version
                continue
        return sorted(metas, key=lambda m: m.created_at)

    def active_version(self) -> str | None:
        try:
            return (self.root / ACTIVE_FILE).read_text().strip() or None
        except FileNotFoundError:
            return None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Held while the active version is compared and changed (promote, rollback, retrain), so that
        what one of them compared against is still active when it activates. An advisory ``flock`` on
        ``.lock``; on a registry this user cannot create it in (read-only), nothing is held."""
        make_dirs(self.root)
        fd = _open_lock(self.root / LOCK_FILE)
        if fd is None:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def activate(self, version: str, reason: str = "manual") -> ModelMeta:
        """Make ``version`` the active one (atomically, durably) and record it in the history."""
        meta = self.read_meta(version)
        previous = self.active_version()
        make_dirs(self.root)
        write_durably(self.root / ACTIVE_FILE, (version + "\n").encode())
        entry = {
            "at": datetime.now(UTC).isoformat(),
            "version": version,
            "previous": previous,
            "reason": reason,
        }
        with (self.root / HISTORY_FILE).open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(self.root)  # the history's name, the first time
        return meta

    def history(self) -> list[dict[str, Any]]:
        try:
            lines = (self.root / HISTORY_FILE).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def previous_version(self) -> str:
        """The version that was active before the current one (what ``rollback`` activates)."""
        current = self.active_version()
        for entry in reversed(self.history()):
            if entry["version"] == current and entry.get("previous"):
                return check_version(str(entry["previous"]))
        raise RegistryError(f"no earlier active version recorded before {current}")

    def rollback(self) -> ModelMeta:
        """Re-activate the version that was active before the current one."""
        current = self.active_version()
        return self.activate(self.previous_version(), reason=f"rollback from {current}")

    def install(self, source: Path) -> ModelMeta:
        """Copy a version folder (e.g. a training run's output) into the registry, unchanged: into a
        staging folder, every file flushed, then renamed into place in one step and the rename flushed, so
        that a version folder is complete or absent whatever a crash interrupts."""
        meta = read_meta(source)
        target = self.version_dir(meta.version)
        if target.exists():
            existing = read_meta(target, meta.version)
            if existing.model_sha256 != meta.model_sha256:
                raise RegistryError(f"version {meta.version} already exists with a different model")
            return existing
        make_dirs(self.versions)
        staging = _temporary(self.versions, meta.version)
        staging.mkdir(mode=0o777)
        try:
            for name in VERSION_FILES:
                if (source / name).is_file():
                    _copy_flushed(source / name, staging / name)
            read_meta(staging, meta.version)  # what was copied is what was checked
            fsync_dir(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            staging.replace(target)  # publishes the complete version
        except OSError:  # another station installed it first
            shutil.rmtree(staging, ignore_errors=True)
            if not target.is_dir() or read_meta(target, meta.version).model_sha256 != meta.model_sha256:
                raise
            return meta
        fsync_dir(self.versions)
        return meta

    def ensure_active(self) -> str:
        """The active version; on an empty registry, install and activate the bundled model. A registry
        made by an older release gets the newer bundled version installed beside its own, not activated
        (it would change every score without anyone asking: ``inspectd promote`` it)."""
        active = self.active_version()
        try:
            bundled = self.install(bundled_model_dir())
        except (OSError, RegistryError):
            if active is None:
                raise
            return active  # a read-only shared registry, say: the active version is what matters
        if active is not None:
            return active
        self.activate(bundled.version, reason="bundled default")
        return bundled.version


def write_meta(version_dir: Path, meta: ModelMeta) -> None:
    (version_dir / META_FILE).write_text(json.dumps(meta.model_dump(mode="json"), indent=2) + "\n")
