"""Model registry: a folder of immutable versions and a pointer to the active one.

    <models>/versions/<version>/model.tflite     the network, outputs one logit per image
    <models>/versions/<version>/metadata.json    ModelMeta below
    <models>/versions/<version>/selftest.npz     inputs and the scores they must reproduce
    <models>/active                              the active version's id (replaced atomically)

A version never changes once written; activating one is a single atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MODEL_FILE = "model.tflite"
META_FILE = "metadata.json"
SELFTEST_FILE = "selftest.npz"
ACTIVE_FILE = "active"
HISTORY_FILE = "history.jsonl"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Calibration(BaseModel):
    """score = sigmoid(a * logit + b): Platt scaling fitted on validation data."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    a: float = 1.0
    b: float = 0.0


class Tiling(BaseModel):
    """The version was trained on tiles: the daemon cuts frames the same way (inspectd/tiles.py)."""

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
    quantization: Literal["none", "dynamic", "int8"] = "none"  # how the network's weights are stored
    created_at: datetime
    model_sha256: str
    metrics: dict[str, Any] = {}
    training: dict[str, Any] = {}


class RegistryError(Exception):
    """A version is missing, malformed, or cannot be activated."""


def bundled_model_dir() -> Path:
    return Path(str(files("inspectd"))) / "bundled_model"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_meta(version_dir: Path) -> ModelMeta:
    try:
        meta = ModelMeta.model_validate_json((version_dir / META_FILE).read_bytes())
    except FileNotFoundError:
        raise RegistryError(f"{version_dir}: no {META_FILE}") from None
    except ValidationError as exc:
        raise RegistryError(f"{version_dir / META_FILE}: invalid metadata: {exc}") from None
    model = version_dir / MODEL_FILE
    if not model.is_file():
        raise RegistryError(f"{version_dir}: no {MODEL_FILE}")
    if file_sha256(model) != meta.model_sha256:
        raise RegistryError(f"{model}: checksum does not match metadata (file changed or corrupt)")
    return meta


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = root / "versions"

    def version_dir(self, version: str) -> Path:
        return self.versions / version

    def list_versions(self) -> list[ModelMeta]:
        metas = []
        for child in sorted(self.versions.glob("*")) if self.versions.is_dir() else []:
            try:
                metas.append(read_meta(child))
            except RegistryError:
                continue
        return sorted(metas, key=lambda m: m.created_at)

    def active_version(self) -> str | None:
        try:
            return (self.root / ACTIVE_FILE).read_text().strip() or None
        except FileNotFoundError:
            return None

    def activate(self, version: str, reason: str = "manual") -> ModelMeta:
        """Make ``version`` the active one (atomically) and record it in the history."""
        meta = read_meta(self.version_dir(version))
        previous = self.active_version()
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".active.", dir=self.root)
        with os.fdopen(fd, "w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(self.root / ACTIVE_FILE)
        entry = {
            "at": datetime.now(UTC).isoformat(),
            "version": version,
            "previous": previous,
            "reason": reason,
        }
        with (self.root / HISTORY_FILE).open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        return meta

    def history(self) -> list[dict[str, Any]]:
        try:
            lines = (self.root / HISTORY_FILE).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def rollback(self) -> ModelMeta:
        """Re-activate the version that was active before the current one."""
        current = self.active_version()
        for entry in reversed(self.history()):
            if entry["version"] == current and entry.get("previous"):
                return self.activate(entry["previous"], reason=f"rollback from {current}")
        raise RegistryError(f"no earlier active version recorded before {current}")

    def install(self, source: Path) -> ModelMeta:
        """Copy a version folder (e.g. a training run's output) into the registry, unchanged."""
        meta = read_meta(source)
        target = self.version_dir(meta.version)
        if target.exists():
            existing = read_meta(target)
            if existing.model_sha256 != meta.model_sha256:
                raise RegistryError(f"version {meta.version} already exists with a different model")
            return existing
        self.versions.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{meta.version}.", dir=self.versions))
        for name in (MODEL_FILE, META_FILE, SELFTEST_FILE):
            if (source / name).is_file():
                shutil.copy2(source / name, staging / name)
        try:
            staging.replace(target)
        except OSError:  # another station installed it first
            shutil.rmtree(staging, ignore_errors=True)
            if not target.is_dir() or read_meta(target).model_sha256 != meta.model_sha256:
                raise
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
