"""Which of a version's networks runs on this CPU.

A quantized version ships its float network too (registry.FLOAT_MODEL_FILE). Which is faster depends on
the CPU, not on the model: int8 kernels win with fast int8 dot products (AVX-512 VNNI, AVX-VNNI, Arm
dot-product), and lose to float on CPUs with AVX2 alone (1.05 against 0.64 ms per image, measured on an
AVX2-only EPYC). So the daemon times both at load on its own call size and runs the faster, provided
their scores agree on the version's self-test inputs; ``[model] network`` can fix the choice instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from inspectd.core.config import NetworkChoice

# Largest difference in calibrated score, on the self-test inputs, between the two networks of a version
# for them to count as the same model (a verdict can differ between them only for a score this near the
# threshold): measured 0.0001 on the bundled model, 0.005 on a small test network; a float network that
# disagrees by more is not shipped, nor run in the quantized one's place.
AGREEMENT_TOLERANCE = 0.02
TIMED_CALLS = 3  # per network, alternating, after one warm-up call each; the fastest call counts


@dataclass(frozen=True, slots=True)
class Choice:
    network: str  # the quantization of the network that runs ("int8", "dynamic" or "none")
    reason: str
    ms_per_input: dict[str, float]  # what was measured, by network ({} when nothing was timed)


def choose(
    mode: NetworkChoice, shipped: str, disagreement: float | None, timings: dict[str, float] | None
) -> Choice:
    """The decision, from what was measured. ``shipped``: the version's primary network; ``disagreement``:
    the two networks' largest score difference (None: the version has one network); ``timings``: ms per
    input of each network (None when they were not timed)."""
    if disagreement is None:
        return Choice(shipped, "the only network of this version", {})
    if disagreement > AGREEMENT_TOLERANCE:
        return Choice(shipped, f"the float network disagrees by {disagreement:.3f} in score", {})
    if mode == "shipped":
        return Choice(shipped, "[model] network = shipped", {})
    if mode == "float":
        return Choice("none", "[model] network = float", {})
    if not timings:
        raise ValueError("choosing the fastest network needs its timings")
    fastest = min(timings, key=lambda k: timings[k])
    ranked = sorted(timings.items(), key=lambda kv: kv[1])
    measured = ", ".join(f"{network_name(k)} {v:.3f}" for k, v in ranked)
    return Choice(fastest, f"fastest here: {measured} ms per input", dict(timings))


def network_name(network: str) -> str:
    """A network as people name it: its quantization, "none" being float."""
    return "float" if network == "none" else network


def time_per_input(
    calls: dict[str, Callable[[], object]],
    inputs: int,
    repeats: int = TIMED_CALLS,
    statistic: Callable[[list[float]], float] = min,
) -> dict[str, float]:
    """Milliseconds per input of each call, run alternately (so that a drift of the machine's speed
    hits every network alike): one warm-up each, then ``statistic`` (the fastest, by default) of
    ``repeats`` timed calls."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - started)
    return {name: 1000.0 * statistic(times) / inputs for name, times in samples.items()}
