"""Datasets as arrays: images pass through the daemon's own preprocessing function."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
import numpy.typing as npt

from inspectd.core.preprocess import preprocess
from inspectd.ops.synth import SynthSpec, generate


def _chunk(
    seed: int, count: int, spec: SynthSpec, size: tuple[int, int]
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int_]]:
    rng = np.random.default_rng(seed)
    xs = np.empty((count, *size), np.uint8)
    ys = np.empty(count, np.int_)
    for i in range(count):
        sample = generate(rng, spec)
        xs[i] = np.rint(preprocess(sample.image, size)[..., 0] * 255.0).astype(np.uint8)
        ys[i] = int(sample.present)
    return xs, ys


def synthetic_arrays(
    count: int, seed: int, spec: SynthSpec, size: tuple[int, int], workers: int = 2
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int_]]:
    """``count`` generated images preprocessed to ``size``: (N, H, W, 1) float32 and (N,) labels.

    Stored as uint8 between the steps, so the arrays are exactly what an 8-bit file would give.
    """
    chunks = max(1, workers * 4)
    sizes = [count // chunks + (1 if i < count % chunks else 0) for i in range(chunks)]
    seeds = [seed * 1000 + i for i in range(chunks)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(partial(_chunk, spec=spec, size=size), seeds, sizes))
    xs = np.concatenate([p[0] for p in parts]).astype(np.float32)[..., np.newaxis] / 255.0
    ys = np.concatenate([p[1] for p in parts])
    return xs, ys
