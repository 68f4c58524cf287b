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


def mil_cnn(
    input_size: tuple[int, int], widths: tuple[int, ...] = (16, 24, 48, 64, 96, 96), dropout: float = 0.1
) -> Any:
    """A fully-convolutional CNN for image-level labels (multiple-instance learning): it scores every
    place of the frame (a logit map at 1/16 of the input) and the frame's logit is the map's maximum.

    Trained with binary cross-entropy on the frame label, a present frame teaches "some place here is the
    symbol", an absent one "no place here is": the loss of an absent frame falls on its highest-scoring
    place, so every epoch trains on each negative's hardest patch (hard-negative mining built in), and no
    global statistic of the background reaches the logit. No boxes are needed, and a large frame is
    scanned in one pass. The first convolution has stride 2 (a learned, non-smearing reduction of the
    native-resolution input); the receptive field is about 110 input pixels."""
    k = keras()
    layers = k.layers
    inputs = k.Input((*input_size, 1), name="image")
    x = layers.Rescaling(2.0, offset=-1.0)(inputs)
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    for i, width in enumerate(widths[1:]):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        if i < 3:  # down to 1/16 of the input, then two more layers widen the receptive field
            x = layers.MaxPooling2D(2)(x)
    return k.Model(inputs, mil_head(x, dropout), name="mil_cnn")


def mil_head(features: Any, dropout: float = 0.1, width: int = 0, kernel: int = 1) -> Any:
    """A logit per place of a feature map, and the frame's logit: their maximum. ``width``: one more
    convolution (``kernel`` wide: 3 lets each place see its neighbours) before the logit."""
    k = keras()
    layers = k.layers
    x = features
    if width:
        x = layers.Conv2D(width, kernel, padding="same", activation="relu", name="mil_features")(x)
    if dropout:
        x = layers.SpatialDropout2D(dropout)(x)
    x = layers.Conv2D(1, 1, name="logit_map")(x)
    return layers.GlobalMaxPooling2D(name="logit")(x)
