"""Network builders. Every network takes (H, W, 1) float32 in [0, 1] and outputs one logit."""

from __future__ import annotations

from typing import Any

from inspectd.train.tf import keras


def small_cnn(input_size: tuple[int, int], widths: tuple[int, ...] = (16, 32, 48, 64)) -> Any:
    """A compact CNN: conv-BN-ReLU blocks, then global average and max pooling (the max keeps a small,
    localised mark from being averaged away), then one logit."""
    k = keras()
    layers = k.layers
    inputs = k.Input((*input_size, 1), name="image")
    x = layers.Rescaling(2.0, offset=-1.0)(inputs)
    for width in widths:
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)
    pooled = layers.Concatenate()([layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)])
    outputs = layers.Dense(1, name="logit")(pooled)
    return k.Model(inputs, outputs, name="small_cnn")
