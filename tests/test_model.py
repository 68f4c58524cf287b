"""The bundled model and the registry, loaded exactly as the daemon loads them (LiteRT, no TensorFlow)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from inspectd.core.config import ModelConfig
from inspectd.core.preprocess import preprocess
from inspectd.core.registry import (
    MODEL_FILE,
    SELFTEST_FILE,
    ModelMeta,
    ModelRegistry,
    RegistryError,
    Tiling,
    bundled_model_dir,
    file_sha256,
    read_meta,
    write_meta,
)
from inspectd.model.choice import AGREEMENT_TOLERANCE
from inspectd.model.runner import MAX_CHUNK, Runner, _chunks, call_sizes
from inspectd.model.runtime import Inferencer, ModelLoadError, max_inputs_for, sigmoid
from inspectd.ops.synth import SynthSpec, generate
from tests.conftest import Workspace


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


def test_the_bundled_version_ships_both_networks_and_runs_the_faster(registry: ModelRegistry) -> None:
    """Both networks self-tested; the one that runs was timed against the other at load; their scores
    agree; the config can fix either one."""
    meta = read_meta(bundled_model_dir())
    assert meta.quantization == "int8" and meta.float_model_sha256 is not None
    fastest = Inferencer.load(bundled_model_dir(), num_threads=1, max_inputs=8)
    timings = fastest.choice.ms_per_input
    assert set(timings) == {"int8", "none"} and fastest.network == min(timings, key=lambda k: timings[k])
    assert fastest.choice.reason.startswith("fastest here: ")
    assert sorted(fastest._runners) == [fastest.network]  # the other one is dropped
    quantized = Inferencer.load(bundled_model_dir(), num_threads=1, network="shipped")
    floating = Inferencer.load(bundled_model_dir(), num_threads=1, network="float")
    assert (quantized.network, floating.network) == ("int8", "none")
    x = np.random.default_rng(3).random((8, *meta.input_size, 1), dtype=np.float32)
    assert np.max(np.abs(quantized.scores(x) - floating.scores(x))) < AGREEMENT_TOLERANCE


def test_a_damaged_float_network_refuses_the_version(registry: ModelRegistry) -> None:
    target = copy_version(registry, "float-corrupt-1")
    (target / "model-float.tflite").write_bytes(b"\0" * 1000)
    with pytest.raises(ModelLoadError, match=r"model-float\.tflite: checksum"):
        Inferencer.load(target)
    (target / "model-float.tflite").unlink()
    with pytest.raises(ModelLoadError, match=r"no model-float\.tflite"):
        Inferencer.load(target)


def test_a_float_network_that_does_not_reproduce_its_scores_is_dropped(registry: ModelRegistry) -> None:
    """The shipped (quantized) network decides whether the version loads; a float network off its
    recorded scores (another CPU's rounding, say) is dropped, with the reason, and the shipped one runs."""
    target = copy_version(registry, "float-drifted-1")
    with np.load(target / "selftest.npz") as data:
        recorded = dict(data)
    recorded["scores_float"] = np.clip(recorded["scores_float"] + 0.2, 0, 1)
    np.savez(target / "selftest.npz", **recorded)
    loaded = Inferencer.load(target, network="float")
    assert loaded.network == "int8" and "the float network is dropped: self-test" in loaded.choice.reason
    recorded["scores"] = np.clip(recorded["scores"] + 0.2, 0, 1)
    np.savez(target / "selftest.npz", **recorded)
    with pytest.raises(ModelLoadError, match="self-test scores of the int8 network"):
        Inferencer.load(target)


def test_a_network_that_cannot_be_run_is_a_load_error_not_a_crash(registry: ModelRegistry) -> None:
    """Whatever the interpreter says about a network (its input is not the metadata's, its bytes are not
    a flatbuffer though their checksum matches) is a ModelLoadError: exit 78 at start, a refused
    reload, a clear line from promote."""
    target = copy_version(registry, "wrong-size-1")
    meta = json.loads((target / "metadata.json").read_text())
    meta["input_size"] = [96, 96]
    (target / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="does not match metadata input_size"):
        Inferencer.load(target)
    target = copy_version(registry, "garbage-float-1")
    (target / "model-float.tflite").write_bytes(b"not a flatbuffer" * 100)
    meta = json.loads((target / "metadata.json").read_text())
    meta["float_model_sha256"] = hashlib.sha256(b"not a flatbuffer" * 100).hexdigest()
    (target / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="garbage-float-1"):
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
        "import sys, inspectd.daemon.lifecycle, inspectd.ops.cli\n"
        "from inspectd.model.runtime import Inferencer\n"
        "from inspectd.core.registry import bundled_model_dir\n"
        "Inferencer.load(bundled_model_dir())\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'tensorflow imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- a model is loaded completely: every call size its batches can use --------------------------------


@pytest.mark.parametrize("max_inputs", [1, 2, 3, 16, 17, 63, 64, 65, 200, 1024])
def test_call_sizes_are_every_size_a_batch_can_use(max_inputs: int) -> None:
    used = {size for n in range(1, max_inputs + 1) for _, size in _chunks(n)}
    assert call_sizes(max_inputs) == sorted(used)
    assert call_sizes(16) == [1, 2, 4, 8, 16] and call_sizes(1000) == [1, 2, 4, 8, 16, 32, 64]


def test_load_creates_and_runs_every_call_size() -> None:
    inferencer = Inferencer.load(bundled_model_dir(), num_threads=1, max_inputs=16)
    assert sorted(inferencer._runner._interpreters) == [1, 2, 4, 8, 16]
    assert not hasattr(inferencer, "warm")  # nothing left to do after load


def test_max_inputs_for_a_station() -> None:
    meta = read_meta(bundled_model_dir())
    assert meta.tiling is None
    assert max_inputs_for(meta, ModelConfig(), 16) == 16  # one input per image
    assert max_inputs_for(meta, ModelConfig(tile=256), 16) == MAX_CHUNK  # the station tiles it
    tiled = meta.model_copy(update={"tiling": Tiling(tile=128)})
    assert max_inputs_for(tiled, ModelConfig(), 4) == MAX_CHUNK  # the version is tiled


def fixed_batch_version(out: Path, version: str) -> Path:
    """A version whose network only runs one input at a time (its batch fixed at 1 when converted): it
    passes the checksum and a one-input self-test, and XNNPack cannot reshape it for a call of two."""
    from inspectd.train.tf import tensorflow

    tf = tensorflow()
    weights = tf.constant(np.random.default_rng(0).normal(0, 0.05, (32 * 32, 1)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 1], tf.float32)])  # type: ignore[untyped-decorator]
    def net(x: object) -> object:
        return tf.matmul(tf.reshape(x, [1, 32 * 32]), weights)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([net.get_concrete_function()], net)
    content = bytes(converter.convert())
    out.mkdir(parents=True)
    (out / MODEL_FILE).write_bytes(content)
    image = np.random.default_rng(1).integers(0, 256, (1, 32, 32), dtype=np.uint8)
    logit = Runner(content, (32, 32), 1).logits(image[..., np.newaxis].astype(np.float32) / 255.0)
    np.savez_compressed(out / SELFTEST_FILE, inputs=image, scores=sigmoid(logit))
    meta = ModelMeta(
        version=version,
        input_size=(32, 32),
        threshold=0.5,
        created_at=datetime.now(UTC),
        model_sha256=file_sha256(out / MODEL_FILE),
    )
    write_meta(out, meta)
    return out


@pytest.mark.train
def test_a_network_with_a_fixed_batch_of_one_is_refused_at_load(tmp_path: Path) -> None:
    folder = fixed_batch_version(tmp_path / "fixed-1", "fixed-1")
    Inferencer.load(folder, num_threads=1, max_inputs=1)  # checksum, one-input calls, self-test: fine
    with pytest.raises(ModelLoadError, match="cannot run a call of 2 inputs") as refused:
        Inferencer.load(folder, num_threads=1, max_inputs=16)
    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith("fixed-1: ")


@pytest.mark.train
@pytest.mark.slow
def test_promote_refuses_a_version_the_daemon_could_not_run(upgraded: Workspace) -> None:
    registry = ModelRegistry(upgraded.models)
    active = registry.ensure_active()
    fixed_batch_version(registry.versions / "fixed-1", "fixed-1")

    refused = upgraded.cli("promote", "fixed-1", check=False)  # [batch] max_size 16: calls of up to 16
    assert refused.returncode == 1, refused.stdout
    (line,) = [line for line in refused.stderr.splitlines() if "fixed-1" in line]  # one line, the reason
    assert line.startswith("Error: not promoted: fixed-1: cannot run a call of 2 inputs: "), line
    assert registry.active_version() == active
    assert "(* = " + active in upgraded.cli("models").stdout  # nothing recorded in the database

    upgraded.write_config(batch={"max_size": 1}, model={"num_threads": 1, "tile": 256})  # tiles: up to 64
    assert upgraded.cli("promote", "fixed-1", check=False).returncode == 1
    upgraded.write_config(batch={"max_size": 1})  # one image, one input per call: the daemon can run it
    assert "active model: fixed-1" in upgraded.cli("promote", "fixed-1").stdout
    assert registry.active_version() == "fixed-1"
