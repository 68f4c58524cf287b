"""The ``[retrain]`` section of the configuration tree (config.py): the recipe, its augmentation, the
symbol artwork's composites and the promotion gate. Its own module: the daemon never reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inspectd.core.registry import Quantize

PositiveFloat = Annotated[float, Field(gt=0)]


class Section(BaseModel):
    """A section of the tree: unknown keys are errors, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AugmentConfig(Section):
    """Random transforms of training images only (0 disables one).

    The geometric ones (rotation, scale, shear, translation) are applied at the source resolution, before
    the frame is reduced to the model's input: ``source_copies`` transformed copies of each training
    frame join the training set (inspectd/train/data/geometry.py). After the resize they would smear a thin
    mark's lines (at 128 px the bundled mark's lines are under a pixel wide). The others (brightness,
    contrast, blur, noise, flips) run in the training pipeline, for networks trained on images.
    """

    rotation_deg: float = Field(default=15.0, ge=0, le=180)
    scale: float = Field(default=0.15, ge=0, lt=1)
    shear_deg: float = Field(default=5.0, ge=0, le=45)
    translate: float = Field(default=0.0, ge=0, lt=0.5)
    source_copies: int = Field(default=1, ge=0, le=8)  # transformed copies of each training frame
    brightness: float = Field(default=0.15, ge=0, le=1)
    contrast: float = Field(default=0.2, ge=0, le=1)
    blur_sigma: float = Field(default=0.0, ge=0, le=5)
    noise_std: float = Field(default=0.01, ge=0, le=0.5)
    flip: bool = True  # mirror images; turn off when the symbol is not mirror-symmetric


class SymbolConfig(Section):
    """Synthetic positives from the mark's artwork (``retrain --symbol ART``; train/data/composite.py):
    drawn into labeled absent training images, never into validation, holdout or gate images."""

    artwork: Path | None = None  # an image of the mark (alpha, or dark on light / light on dark)
    count: int = Field(default=2000, ge=1, le=100_000)  # synthetic positives per retrain
    # the mark's longer side, as fractions of the frame's (or the ROI's) shorter side
    size: tuple[float, float] = (0.06, 0.25)
    rotation_deg: float = Field(default=25.0, ge=0, le=180)
    shear_deg: float = Field(default=10.0, ge=0, le=45)
    aspect: float = Field(default=0.15, ge=0, le=1)  # width/height stretched by up to this fraction
    stroke: float = Field(default=0.5, ge=0, le=3)  # strokes thicker/thinner by up to this px per 16 px
    blur_sigma: float = Field(default=1.2, ge=0, le=5)
    contrast: tuple[float, float] = (0.12, 0.5)  # ink against its background, fractions of full scale
    dark_share: float = Field(default=0.5, ge=0, le=1)  # marks darker than their background (polarity)
    opacity: float = Field(default=0.8, gt=0, le=1)  # the least opacity (the background shows through)
    occlusion: float = Field(default=0.15, ge=0, le=1)  # share of marks with a corner hidden
    noise: float = Field(default=0.03, ge=0, le=0.5)  # noise on the ink, fractions of full scale

    @field_validator("size", "contrast")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError("must be [low, high] with 0 < low <= high <= 1")
        return value


class GateConfig(Section):
    """A candidate is promoted only if, on the same holdout, it loses no more than this."""

    max_recall_drop: float = Field(default=0.0, ge=0, le=1)
    max_roc_auc_drop: float = Field(default=0.005, ge=0, le=1)


# the one list of backbone names (train/backbones.py builds each; tests/test_backbones.py checks they agree)
Backbone = Literal[
    "small_cnn",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "resnet50",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
]


class RetrainConfig(Section):
    backbone: Backbone = "efficientnet_lite0"
    pretrained: bool = True  # ImageNet weights for the pretrained backbones (from weights, else download)
    weights: dict[
        str, Path
    ] = {}  # backbone -> local ImageNet weights file (.weights.h5), for offline machines
    # network input, pixels per side; 0: chosen from the labeled images (their median side, at most
    # AUTO_INPUT_MAX: frames that small are seen at their own resolution, larger ones resized to it)
    input_size: int = Field(default=0, ge=0, le=512)
    # "global": features pooled over the frame, then one dense logit; "mil": a fully-convolutional network
    # scoring every place of the frame, the frame's logit the highest place's (multiple-instance learning
    # from image-level labels: no boxes needed; see inspectd/train/nets/small.py)
    head: Literal["global", "mil"] = "mil"
    # Tiled training: tiles of this many frame pixels (resized to input_size), the daemon cutting frames
    # the same way for this version; None trains on whole frames (or the ROI) resized to input_size.
    tile: int | None = Field(default=None, ge=8)
    tile_overlap: float = Field(default=0.25, ge=0, lt=1)
    epochs: int = Field(default=30, ge=1)
    # pretrained backbones: a second phase with the top layers unfrozen; None: 10 with the global head, 0
    # with the MIL head (whose first phase trains on feature maps computed once: fine-tuning would run the
    # backbone over every image in every epoch)
    fine_tune_epochs: int | None = Field(default=None, ge=0)
    # a MIL head on a frozen backbone: a second round on the absent frames scored highest (0: none)
    hard_negative_epochs: int = Field(default=0, ge=0)
    # a MIL head on a frozen backbone: train it this many times from fresh initial weights (the features
    # are computed once) and keep the one with the best validation ROC-AUC. From image labels alone a
    # head finds a hard mark in some starts only (the X of bench-quality, seed 1: validation 0.53, 0.57,
    # then 0.80 at the third start; test ROC-AUC 0.511 -> 0.807, F1 0.378 -> 0.650, 203 -> 570 s)
    head_restarts: int = Field(default=3, ge=1, le=8)
    # a MIL head: each start first trains this many epochs with every place taking its frame's label
    # (fit/bags.py place_loss), then on the maximum. From a random start the maximum can lock on to
    # background texture (the X of bench-quality: at chance in two starts of three)
    warmup_epochs: int = Field(default=3, ge=0)
    fine_tune_layers: int = Field(default=30, ge=0)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    fine_tune_learning_rate: float = Field(default=1e-5, gt=0)
    patience: int = Field(default=6, ge=1)
    # epochs before early stopping or the learning-rate schedule may act: a MIL head can take several
    # epochs at chance before it finds the mark (measured: found at epoch 6-8 of 19, or never when stopped
    # at epoch 13 after a best at 7)
    min_epochs: int = Field(default=12, ge=0)
    min_per_class: int = Field(default=20, ge=2)
    holdout_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    validation_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    seed: int = 1234
    threshold_policy: Literal["best_f1", "target_recall"] = "best_f1"
    target_recall: float = Field(default=0.95, gt=0, le=1)
    # The network the daemon runs: int8 weights and activations (about 3x less CPU per image than float),
    # dynamic (int8 weights), or none (float). A quantized network that loses validation ROC-AUC is
    # refused and the float one ships instead (inspectd/train/convert.py).
    quantize: Quantize = "int8"
    augment: AugmentConfig = AugmentConfig()
    symbol: SymbolConfig = SymbolConfig()
    gate: GateConfig = GateConfig()

    @property
    def fine_tune(self) -> int:
        """Epochs of the second phase (``fine_tune_epochs`` resolved)."""
        if self.fine_tune_epochs is not None:
            return self.fine_tune_epochs
        return 0 if self.head == "mil" else 10

    @field_validator("input_size")
    @classmethod
    def _input_size(cls, value: int) -> int:
        if 0 < value < 32:
            raise ValueError("must be 0 (chosen from the images) or at least 32")
        return value
