"""The bundled model and the registry, loaded exactly as the daemon loads them (LiteRT, no TensorFlow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inspectd.infer import MAX_CHUNK, Inferencer, ModelLoadError, _chunks
from inspectd.preprocess import preprocess
from inspectd.registry import ModelRegistry, RegistryError, bundled_model_dir, read_meta
from inspectd.synth import SynthSpec, generate


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "models")
    registry.ensure_active()
    return registry


def copy_version(registry: ModelRegistry, new: str) -> Path:
    source = registry.version_dir(registry.ensure_active())
    target = registry.version_dir(new)
    shutil.copytree(source, target)
    meta = json.loads((target / "metadata.json").read_text())
    meta["version"] = new
    (target / "metadata.json").write_text(json.dumps(meta))
    return target


def test_bundled_model_is_small_and_complete() -> None:
    meta = read_meta(bundled_model_dir())
    assert (bundled_model_dir() / "model.tflite").stat().st_size < 3_000_000
    assert meta.input_size[0] >= 64 and 0 < meta.threshold < 1


def test_empty_registry_gets_the_bundled_model(registry: ModelRegistry) -> None:
    version = registry.active_version()
    assert version == read_meta(bundled_model_dir()).version
    assert [m.version for m in registry.list_versions()] == [version]
    inferencer = Inferencer.load(registry.version_dir(version))  # runs the self-test
    assert inferencer.version == version


def test_bundled_model_tells_present_from_absent() -> None:
    from sklearn.metrics import roc_auc_score

    inferencer = Inferencer.load(bundled_model_dir(), num_threads=1)
    rng = np.random.default_rng(20261123)  # not a seed the model was trained on
    samples = [generate(rng, SynthSpec(), present=bool(i % 2)) for i in range(120)]
    batch = np.stack([preprocess(s.image, inferencer.input_size) for s in samples])
    scores = inferencer.scores(batch)
    labels = np.array([int(s.present) for s in samples])
    assert roc_auc_score(labels, scores) > 0.9
    assert np.all((scores >= 0) & (scores <= 1))


def test_batched_and_single_scores_agree() -> None:
    inferencer = Inferencer.load(bundled_model_dir(), num_threads=1)
    rng = np.random.default_rng(5)
    images = [preprocess(generate(rng, SynthSpec()).image, inferencer.input_size) for _ in range(7)]
    batch = np.stack(images * 10)  # 70 inputs: calls of 64, 4 and 2
    together = inferencer.scores(batch)
    alone = np.array([inferencer.scores(batch[i : i + 1])[0] for i in range(7)])
    assert np.allclose(together, np.tile(alone, 10), atol=1e-5)
    assert np.allclose(inferencer.scores(batch[:7]), alone, atol=1e-5)  # one call of 8, padded


@pytest.mark.parametrize("n", [*range(1, 70), 143, 1000])
def test_calls_cover_the_batch_with_little_padding(n: int) -> None:
    calls = _chunks(n)
    assert sum(take for take, _ in calls) == n
    for take, size in calls:
        assert size & (size - 1) == 0 and size <= MAX_CHUNK and take <= size
        assert size - take <= size / 4


def test_registry_of_an_older_release_gets_the_new_bundled_version_beside_its_own(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    bundled = read_meta(bundled_model_dir()).version
    registry.ensure_active()
    old = copy_version(registry, "bundled-0")  # what an older release installed and activated
    registry.activate("bundled-0")
    shutil.rmtree(registry.version_dir(bundled))
    assert registry.ensure_active() == "bundled-0"  # still active: nobody asked for a change
    assert registry.version_dir(bundled).is_dir() and old.is_dir()
    Inferencer.load(registry.version_dir(bundled))  # installed complete, ready to promote


def test_corrupt_model_file_is_refused(registry: ModelRegistry) -> None:
    target = copy_version(registry, "corrupt-1")
    (target / "model.tflite").write_bytes(b"\0" * 1000)
    with pytest.raises(ModelLoadError, match="checksum"):
        Inferencer.load(target)


def test_model_that_does_not_reproduce_its_scores_is_refused(registry: ModelRegistry) -> None:
    target = copy_version(registry, "drifted-1")
    with np.load(target / "selftest.npz") as data:
        inputs, scores = data["inputs"], data["scores"]
    np.savez(target / "selftest.npz", inputs=inputs, scores=np.clip(scores + 0.2, 0, 1))
    with pytest.raises(ModelLoadError, match="self-test"):
        Inferencer.load(target)


def test_missing_selftest_is_refused(registry: ModelRegistry) -> None:
    target = copy_version(registry, "untested-1")
    (target / "selftest.npz").unlink()
    with pytest.raises(ModelLoadError, match="self-test"):
        Inferencer.load(target)


def test_activate_is_atomic_and_checked(registry: ModelRegistry) -> None:
    copy_version(registry, "second-1")
    registry.activate("second-1")
    assert registry.active_version() == "second-1"
    with pytest.raises(RegistryError):
        registry.activate("does-not-exist")
    assert registry.active_version() == "second-1"
    assert not list(registry.root.glob(".active.*"))


def test_daemon_runtime_never_imports_tensorflow() -> None:
    code = (
        "import sys, inspectd.daemon, inspectd.cli\n"
        "from inspectd.infer import Inferencer\n"
        "from inspectd.registry import bundled_model_dir\n"
        "Inferencer.load(bundled_model_dir())\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'tensorflow imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
