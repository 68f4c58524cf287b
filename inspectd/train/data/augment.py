"""Augmentation inside the training pipeline (training batches only), from [retrain.augment]: the
photometric transforms and flips. The geometric ones happen at the source resolution (geometry.py)."""

from __future__ import annotations

from typing import Any

from inspectd.core.retrain_config import AugmentConfig
from inspectd.train.tf import keras


def pipeline(cfg: AugmentConfig, seed: int) -> Any | None:
    """The in-pipeline transforms as one Keras model, or None when every one is disabled."""
    k = keras()
    layers = k.layers
    steps: list[Any] = []
    if cfg.flip:
        steps.append(layers.RandomFlip("horizontal_and_vertical", seed=seed))
    if cfg.brightness:
        steps.append(layers.RandomBrightness(cfg.brightness, value_range=(0.0, 1.0), seed=seed + 5))
    if cfg.contrast:
        steps.append(layers.RandomContrast(cfg.contrast, value_range=(0.0, 1.0), seed=seed + 6))
    if cfg.blur_sigma:
        steps.append(
            layers.RandomGaussianBlur(factor=0.5, sigma=cfg.blur_sigma, value_range=(0.0, 1.0), seed=seed + 7)
        )
    if cfg.noise_std:
        steps.append(layers.GaussianNoise(cfg.noise_std, seed=seed + 8))
    return k.Sequential(steps, name="augment") if steps else None
