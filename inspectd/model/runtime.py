"""Infer stage: one batched call of the active model (LiteRT) per micro-batch, calibrated scores out.

TensorFlow is not imported here: the LiteRT interpreter runs the converted Keras model faster on this CPU
and starts in a fraction of the time.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt

from inspectd.core import logs
from inspectd.core.config import ModelConfig, NetworkChoice, TileReduce
from inspectd.core.records import Decoded, Scored, Verdict
from inspectd.core.registry import (
    FLOAT_MODEL_FILE,
    MODEL_FILE,
    SELFTEST_FILE,
    ModelMeta,
    ModelRegistry,
    RegistryError,
    read_meta,
)
from inspectd.core.tiles import view_for
from inspectd.model.choice import AGREEMENT_TOLERANCE, Choice, choose, network_name, time_per_input
from inspectd.model.runner import MAX_CHUNK, Runner, call_sizes

log = logs.get("inspectd.model")

__all__ = ["MAX_CHUNK", "Inferencer", "ModelLoadError", "Runner", "call_sizes", "load_version", "sigmoid"]

SELFTEST_TOLERANCE = 1e-3
# A quantized network's integer kernels may round one activation a step apart on another CPU, which moves
# a score by up to a few thousandths; a wrong or damaged model misses by far more.
SELFTEST_TOLERANCE_QUANTIZED = 0.01
MAX_TIMED_CALL = 16  # the networks are timed on calls of the largest size a batch uses, up to this
_TIMINGS: dict[tuple[str, str, int, int], dict[str, float]] = {}  # made once per process (_choose)


class ModelLoadError(Exception):
    """The model version cannot be used: missing, corrupt, incompatible, or not reproducing its scores."""


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


class Inferencer:
    """A loaded, self-tested model version. Not thread-safe: one pipeline thread calls it.

    A quantized version may ship its float network too: both are self-tested, and the one that runs is
    chosen at load (choice.py); ``choice`` says which and why."""

    def __init__(
        self, meta: ModelMeta, model_content: bytes, num_threads: int, float_content: bytes | None = None
    ) -> None:
        self.meta = meta
        self._runners: dict[str, Runner] = {
            meta.quantization: Runner(model_content, meta.input_size, num_threads)
        }
        if float_content is not None and meta.quantization != "none":
            self._runners["none"] = Runner(float_content, meta.input_size, num_threads)
        self._runner = self._runners[meta.quantization]
        self.choice = Choice(meta.quantization, "the only network of this version", {})

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def input_size(self) -> tuple[int, int]:
        return self.meta.input_size

    @property
    def network(self) -> str:
        """The quantization of the network that runs: "int8", "dynamic" or "none" (float)."""
        return self.choice.network

    @classmethod
    def load(
        cls,
        version_dir: Path,
        num_threads: int = 0,
        max_inputs: int = 1,
        version: str | None = None,
        network: NetworkChoice = "fastest",
    ) -> Inferencer:
        """Load and check a version folder completely: metadata and checksums (``version``: the name the
        metadata must give, a registry folder's name), the self-test of each network it ships, which
        network runs (``network``, choice.py), then every call size a batch of up to ``max_inputs``
        inputs can use, created and run once. ModelLoadError, with a one-line reason, when anything
        fails: a model that loads can serve every batch."""
        return cls._load(version_dir, num_threads, lambda _: max_inputs, version, network)

    @classmethod
    def _load(
        cls,
        version_dir: Path,
        num_threads: int,
        max_inputs: Callable[[ModelMeta], int],
        version: str | None,
        network: NetworkChoice = "fastest",
    ) -> Inferencer:
        try:
            meta = read_meta(version_dir, version)
            content = (version_dir / MODEL_FILE).read_bytes()
            floating = (version_dir / FLOAT_MODEL_FILE).read_bytes() if meta.float_model_sha256 else None
            inferencer = cls(meta, content, num_threads, floating)
        except (RegistryError, OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{version_dir}: {_one_line(exc)}") from None
        sizes = call_sizes(max_inputs(meta))
        try:  # an interpreter that cannot be made or run is a ModelLoadError like any other refusal
            disagreement = inferencer.self_test(version_dir / SELFTEST_FILE)
            inferencer._choose(network, disagreement, min(sizes[-1], MAX_TIMED_CALL))
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{meta.version}: {_one_line(exc)}") from None
        for size in sizes:
            try:
                inferencer._runner.check(size)
            except (ValueError, RuntimeError) as exc:
                raise ModelLoadError(
                    f"{meta.version}: cannot run a call of {size} inputs: {_one_line(exc)}"
                ) from None
        return inferencer

    def _choose(self, mode: NetworkChoice, disagreement: float | None, call: int) -> None:
        """Keep the network that runs (choice.py); the other one's interpreters are dropped. The
        timing is made once per version, call size and thread count in a process, so that a reload
        (while the decode workers load every core) does not swap the network on a noisy measurement."""
        if len(self._runners) == 1:  # one network shipped, or the float one dropped: self.choice says
            return
        timings = None
        if disagreement is not None and disagreement <= AGREEMENT_TOLERANCE and mode == "fastest":
            key = (self.meta.version, self.meta.model_sha256, call, self._runner.threads)
            timings = _TIMINGS.get(key)
            if timings is None:
                x = np.random.default_rng(0).random((call, *self.input_size, 1), dtype=np.float32)
                runs: dict[str, Callable[[], object]] = {
                    name: partial(runner.logits, x) for name, runner in self._runners.items()
                }
                timings = _TIMINGS[key] = time_per_input(runs, call)
        self.choice = choose(mode, self.meta.quantization, disagreement, timings)
        self._runner = self._runners[self.choice.network]
        self._runners = {self.choice.network: self._runner}

    def logits(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self._runner.logits(batch)

    def scores(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self._calibrated(self.logits(batch))

    def _calibrated(self, logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        cal = self.meta.calibration
        return sigmoid(np.float32(cal.a) * logits + np.float32(cal.b))

    def self_test(self, selftest: Path) -> float | None:
        """Reproduce the scores recorded when the version was made, with each network it ships. The
        shipped network must, or the version is refused; a float network that does not (another CPU's
        rounding, say) is dropped and the shipped one runs. Returns how far the float network's recorded
        scores are from the quantized one's (None: one network left)."""
        try:
            with np.load(selftest) as data:
                inputs = data["inputs"].astype(np.float32)[..., np.newaxis] / 255.0
                expected: dict[str, npt.NDArray[np.float32]] = {
                    self.meta.quantization: data["scores"].astype(np.float32)
                }
                if len(self._runners) > 1:
                    expected["none"] = data["scores_float"].astype(np.float32)
        except FileNotFoundError:
            raise ModelLoadError(f"{selftest}: missing; every version must ship its self-test") from None
        except (OSError, KeyError, ValueError) as exc:
            raise ModelLoadError(f"{selftest}: unreadable self-test: {exc}") from None
        problem = self._reproduces(self.meta.quantization, inputs, expected[self.meta.quantization])
        if problem is not None:
            raise ModelLoadError(f"{self.version}: {problem}")
        if len(self._runners) == 1:
            return None
        problem = self._reproduces("none", inputs, expected["none"])
        if problem is not None:
            log.warning("model.float_network_dropped", version=self.version, reason=problem)
            del self._runners["none"]
            self.choice = Choice(self.meta.quantization, f"the float network is dropped: {problem}", {})
            return None
        return float(np.max(np.abs(expected["none"] - expected[self.meta.quantization])))

    def _reproduces(
        self, network: str, inputs: npt.NDArray[np.float32], expected: npt.NDArray[np.float32]
    ) -> str | None:
        """None when ``network`` gives the recorded scores, else why not."""
        got = self._calibrated(self._runners[network].logits(inputs))
        if not np.all(np.isfinite(got)):
            return f"the {network_name(network)} network outputs non-finite scores"
        worst = float(np.max(np.abs(got - expected)))
        if worst > (SELFTEST_TOLERANCE if network == "none" else SELFTEST_TOLERANCE_QUANTIZED):
            return (
                f"self-test scores of the {network_name(network)} network differ from the recorded ones "
                f"by up to {worst:.4f}"
            )
        return None

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
        model_cfg.network,
    )
