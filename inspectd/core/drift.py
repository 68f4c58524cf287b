"""How far a distribution has moved: the population stability index (PSI) over fixed bins.

One definition for the daemon (its drift gauges) and retrain (the reference a version keeps of its
validation set: ``metadata.metrics.reference``). 0 is no change; by the usual rule of thumb under 0.1 is
stable, over 0.25 a shift worth a look.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

BINS = 10
# what each quantity can be: calibrated score, and the mean and standard deviation of the model's inputs
RANGES: Mapping[str, tuple[float, float]] = {
    "score": (0.0, 1.0),
    "brightness": (0.0, 1.0),
    "contrast": (0.0, 0.5),
}
EPSILON = 1e-4  # an empty bin counts as this share (PSI is infinite otherwise)


def shares(values: Sequence[float], kind: str, bins: int = BINS) -> list[float]:
    """The share of ``values`` in each of ``bins`` equal bins over RANGES[kind] (the ends clamp)."""
    if not values:
        raise ValueError("no values")
    lo, hi = RANGES[kind]
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))] += 1
    return [c / len(values) for c in counts]


def psi_shares(reference: Sequence[float], recent: Sequence[float]) -> float:
    """PSI between two binned distributions: sum of (q - p) * ln(q / p)."""
    if len(reference) != len(recent):
        raise ValueError("the two distributions have different bins")
    pairs = ((max(EPSILON, p), max(EPSILON, q)) for p, q in zip(reference, recent, strict=True))
    return sum((q - p) * math.log(q / p) for p, q in pairs)


def psi(reference: Sequence[float], recent: Sequence[float], kind: str = "score", bins: int = BINS) -> float:
    """PSI of ``recent`` values against ``reference`` values."""
    if not reference or not recent:
        raise ValueError("both samples need values")
    return psi_shares(shares(reference, kind, bins), shares(recent, kind, bins))


def reference(values: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """What a version keeps of its validation set: the binned distribution of each quantity."""
    return {kind: [round(s, 6) for s in shares(v, kind)] for kind, v in values.items() if v}
