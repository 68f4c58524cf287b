"""Infer stage: one batched call of the active model (LiteRT) per micro-batch, calibrated scores out.

TensorFlow is not imported here: the LiteRT interpreter runs the converted Keras model faster on this CPU
and starts in a fraction of the time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
from ai_edge_litert.interpreter import Interpreter

from inspectd.core.config import ModelConfig, TileReduce
from inspectd.core.records import Decoded, Scored, Verdict
from inspectd.core.registry import (
    MODEL_FILE,
    SELFTEST_FILE,
    ModelMeta,
    ModelRegistry,
    RegistryError,
    read_meta,
)
from inspectd.core.tiles import view_for

SELFTEST_TOLERANCE = 1e-3
# A quantized network's integer kernels may round one activation a step apart on another CPU, which moves
# a score by up to a few thousandths; a wrong or damaged model misses by far more.
SELFTEST_TOLERANCE_QUANTIZED = 0.01
MAX_CHUNK = 64  # inputs per interpreter call at most (bounds the activation memory of one call)


class ModelLoadError(Exception):
    """The model version cannot be used: missing, corrupt, incompatible, or not reproducing its scores."""


def _chunks(n: int) -> list[tuple[int, int]]:
    """``n`` inputs as interpreter calls of power-of-two sizes, so that a few shapes serve every batch:
    (inputs, call size) pairs. What is left is padded up to the next power of two when that wastes at
    most a quarter of the call; otherwise it is split (42 tiles: 32 + 8 + 2, not 64)."""
    out: list[tuple[int, int]] = []
    while n > 0:
        bucket = min(MAX_CHUNK, 1 << (n - 1).bit_length())
        if n >= bucket or n > 0.75 * bucket:
            take = min(n, bucket)
            out.append((take, bucket))
        else:
            take = bucket // 2
            out.append((take, take))
        n -= take
    return out


def call_sizes(max_inputs: int) -> list[int]:
    """Every interpreter call size a batch of up to ``max_inputs`` inputs can use (``_chunks``): powers of
    two, at most MAX_CHUNK. Beyond a few calls of MAX_CHUNK, more inputs add no new size."""
    top = min(max(1, max_inputs), 3 * MAX_CHUNK)
    return sorted({size for n in range(1, top + 1) for _, size in _chunks(n)})


def max_inputs_for(meta: ModelMeta, model_cfg: ModelConfig, batch_max_size: int) -> int:
    """How many inputs one batch can give a model version on a station: every tile of every image of
    the batch when it is tiled (the call sizes then go up to MAX_CHUNK), else one input per image."""
    tiled = view_for(meta, model_cfg).tile is not None
    return MAX_CHUNK if tiled else batch_max_size


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)
    return out


class Runner:
    """The network alone (LiteRT): inputs in, one logit per input out; an interpreter per call size."""

    def __init__(self, content: bytes, input_size: tuple[int, int], num_threads: int) -> None:
        self._content = content
        self._threads = num_threads or (os.cpu_count() or 1)
        self._interpreters: dict[int, Interpreter] = {}
        self._shape = (*input_size, 1)

    def interpreter(self, bucket: int) -> Interpreter:
        interpreter = self._interpreters.get(bucket)
        if interpreter is None:
            interpreter = Interpreter(model_content=self._content, num_threads=self._threads)
            inputs = interpreter.get_input_details()
            outputs = interpreter.get_output_details()
            if len(inputs) != 1 or len(outputs) != 1:
                raise ValueError("the model must have exactly one input and one output")
            declared = tuple(int(d) for d in inputs[0]["shape"][1:])
            if declared != self._shape:
                raise ValueError(f"model input {declared} does not match metadata input_size {self._shape}")
            interpreter.resize_tensor_input(inputs[0]["index"], [bucket, *self._shape], strict=False)
            interpreter.allocate_tensors()
            self._interpreters[bucket] = interpreter
        return interpreter

    def check(self, bucket: int) -> None:
        """Create the interpreter for calls of ``bucket`` inputs and run one on zeros: ValueError or
        RuntimeError unless it gives one finite logit per input (a network built for a fixed batch fails
        here, when it is loaded, not on the first batch of that size)."""
        try:
            out = self._call(bucket, np.zeros((bucket, *self._shape), np.float32))
            if not np.all(np.isfinite(out)):
                raise ValueError(f"a call of {bucket} inputs outputs non-finite logits")
        except (ValueError, RuntimeError):
            self._interpreters.pop(bucket, None)
            raise

    def _call(self, size: int, part: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        interpreter = self.interpreter(size)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], part)
        interpreter.invoke()
        result = np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), np.float32)
        if result.size != size or (result.ndim and result.shape[0] != size):
            raise ValueError(f"a call of {size} inputs outputs shape {result.shape}, not one logit per input")
        return result.reshape(size)

    def logits(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = np.empty(batch.shape[0], np.float32)
        start = 0
        for take, size in _chunks(batch.shape[0]):
            part = batch[start : start + take]
            if take < size:
                part = np.concatenate([part, np.zeros((size - take, *self._shape), np.float32)])
            out[start : start + take] = self._call(size, part)[:take]
            start += take
        return out


class Inferencer:
    """A loaded, self-tested model version. Not thread-safe: one pipeline thread calls it."""

    def __init__(self, meta: ModelMeta, model_content: bytes, num_threads: int) -> None:
        self.meta = meta
        self._runner = Runner(model_content, meta.input_size, num_threads)

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def input_size(self) -> tuple[int, int]:
        return self.meta.input_size

    @classmethod
    def load(
        cls, version_dir: Path, num_threads: int = 0, max_inputs: int = 1, version: str | None = None
    ) -> Inferencer:
        """Load and check a version folder completely: metadata and checksum (``version``: the name the
        metadata must give, a registry folder's name), then every call size a batch of up to
        ``max_inputs`` inputs can use, created and run once, then the self-test. ModelLoadError, with a
        one-line reason, when anything fails: a model that loads can serve every batch."""
        return cls._load(version_dir, num_threads, lambda _: max_inputs, version)

    @classmethod
    def _load(
        cls,
        version_dir: Path,
        num_threads: int,
        max_inputs: Callable[[ModelMeta], int],
        version: str | None,
    ) -> Inferencer:
        try:
            meta = read_meta(version_dir, version)
            content = (version_dir / MODEL_FILE).read_bytes()
            inferencer = cls(meta, content, num_threads)
        except (RegistryError, OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{version_dir}: {_one_line(exc)}") from None
        for size in call_sizes(max_inputs(meta)):
            try:
                inferencer._runner.check(size)
            except (ValueError, RuntimeError) as exc:
                raise ModelLoadError(
                    f"{meta.version}: cannot run a call of {size} inputs: {_one_line(exc)}"
                ) from None
        inferencer.self_test(version_dir / SELFTEST_FILE)
        return inferencer

    def logits(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self._runner.logits(batch)

    def scores(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        cal = self.meta.calibration
        return sigmoid(np.float32(cal.a) * self.logits(batch) + np.float32(cal.b))

    def self_test(self, selftest: Path) -> None:
        """Reproduce the scores recorded when the version was made; refuse the model otherwise."""
        try:
            with np.load(selftest) as data:
                inputs = data["inputs"].astype(np.float32) / 255.0
                expected = data["scores"].astype(np.float32)
        except FileNotFoundError:
            raise ModelLoadError(f"{selftest}: missing; every version must ship its self-test") from None
        except (OSError, KeyError, ValueError) as exc:
            raise ModelLoadError(f"{selftest}: unreadable self-test: {exc}") from None
        got = self.scores(inputs[..., np.newaxis])
        if not np.all(np.isfinite(got)):
            raise ModelLoadError(f"{self.version}: the model outputs non-finite scores")
        worst = float(np.max(np.abs(got - expected)))
        quantized = self.meta.quantization != "none"
        if worst > (SELFTEST_TOLERANCE_QUANTIZED if quantized else SELFTEST_TOLERANCE):
            raise ModelLoadError(
                f"{self.version}: self-test scores differ from the recorded ones by up to {worst:.4f}"
            )

    def classify(
        self, images: list[Decoded], threshold: float | None = None, reduce: TileReduce = "max"
    ) -> list[Scored]:
        """One call for every tile of every image, then each image's verdict (``decide``)."""
        if not images:
            return []
        tiles = images[0].tiles if len(images) == 1 else np.concatenate([i.tiles for i in images])
        scores = self.scores(tiles)
        out: list[Scored] = []
        start = 0
        for image in images:
            out.append(self.decide(image, scores[start : start + len(image.tiles)], threshold, reduce))
            start += len(image.tiles)
        return out

    def decide(
        self,
        image: Decoded,
        tile_scores: npt.NDArray[np.float32],
        threshold: float | None = None,
        reduce: TileReduce = "max",
    ) -> Scored:
        """An image's score from its tiles' scores: the best tile's (``max``) or the mean of the best two
        (``top2_mean``, less swayed by one noisy tile); the best tile is its box."""
        cut = self.meta.threshold if threshold is None else threshold
        best = int(np.argmax(tile_scores))
        score = float(tile_scores[best])
        if reduce == "top2_mean" and len(tile_scores) > 1:
            score = float(np.mean(np.partition(tile_scores, -2)[-2:]))
        box = image.boxes[best] if len(image.boxes) > 1 else None
        verdict = Verdict.PRESENT if score >= cut else Verdict.ABSENT
        return Scored(image, score, verdict, self.version, cut, box)


def load_version(
    registry: ModelRegistry, version: str, model_cfg: ModelConfig, batch_max_size: int
) -> Inferencer:
    """A registry version loaded with every check the daemon runs before it serves it on a station
    (``[model]`` and ``[batch] max_size``): a valid version name whose folder's metadata names it, the
    checksum, every call size its batches can use (``max_inputs_for``), the self-test. Raises
    ModelLoadError only. ``promote`` and ``rollback`` refuse what this refuses."""
    try:
        version_dir = registry.version_dir(version)
    except RegistryError as exc:
        raise ModelLoadError(str(exc)) from None
    return Inferencer._load(
        version_dir,
        model_cfg.num_threads,
        lambda meta: max_inputs_for(meta, model_cfg, batch_max_size),
        version,
    )
