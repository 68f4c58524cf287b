"""Training recipes compared under distribution shift: python benchmarks/retrain_recipes.py

Both recipes train on the same generated images (marks 60-110 px, crosshair angles 0-45 degrees, bright
dies) and are tested on images that differ (marks 40-80 px, angles 45-90 degrees, dark dies):

- seed-style: the tutorial recipe, a Conv-ReLU-MaxPool network with a dense head on 64x64 input, plain
  Adam, no augmentation, no class weights, 0.5 threshold;
- inspectd: `inspectd retrain --backbone small_cnn --head global --input-size 128` (the default until the
  MIL head on EfficientNet-Lite0; augmentation, class weights, early stopping on validation ROC-AUC,
  calibration, best-F1 threshold). The default recipe is measured on real material: benchmarks/quality.py.

Prints holdout ROC-AUC and F1 side by side, and the inspectd recipe's seconds per epoch; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inspectd.core.retrain_config import AugmentConfig, RetrainConfig
from inspectd.model.runtime import sigmoid
from inspectd.ops.synth import SynthSpec
from inspectd.train.data.arrays import synthetic_arrays
from inspectd.train.evaluate.metrics import binary_metrics
from inspectd.train.evaluate.report import calibrate
from inspectd.train.fit.frames import keras_logits, train_arrays
from inspectd.train.tf import keras, tensorflow

TRAIN = SynthSpec(
    present_ratio=0.3, mark_min=60, mark_max=110, angle_deg=(0.0, 45.0), background=(100.0, 150.0)
)
SHIFTED = replace(TRAIN, mark_min=40, mark_max=80, angle_deg=(45.0, 90.0), background=(45.0, 90.0))


def seed_style(x: npt.NDArray[np.float32], y: npt.NDArray[np.int_], epochs: int) -> Any:
    k = keras()
    layers = k.layers
    model = k.Sequential(
        [
            k.Input((64, 64, 1)),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=2)
    return model


def resize(x: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
    tf = tensorflow()
    return np.asarray(tf.image.resize(x, (size, size), method="area"), np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--validation", type=int, default=400)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=RetrainConfig().epochs)
    parser.add_argument("--seed-epochs", type=int, default=10)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument(
        "--augment",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one [retrain.augment] key for the inspectd recipe, e.g. rotation_deg=45",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/retrain_recipes.json"))
    args = parser.parse_args()
    tensorflow(threads=0)
    keras().utils.set_random_seed(11)

    size = args.input_size
    overrides = dict(item.split("=", 1) for item in args.augment)
    augment = AugmentConfig.model_validate({**RetrainConfig().augment.model_dump(), **overrides})
    x, y = synthetic_arrays(args.train, 101, TRAIN, (size, size))
    xv, yv = synthetic_arrays(args.validation, 102, TRAIN, (size, size))
    xt, yt = synthetic_arrays(args.test, 103, SHIFTED, (size, size))

    started = time.monotonic()
    baseline = seed_style(resize(x, 64), y, args.seed_epochs)
    seed_seconds = time.monotonic() - started
    seed_scores = np.asarray(baseline.predict(resize(xt, 64), verbose=0), np.float32).reshape(-1)
    seed_metrics = binary_metrics(yt, seed_scores, 0.5).as_dict()

    # the small CNN (the retrain default before the MIL head on EfficientNet-Lite0: benchmarks/quality.py)
    rc = RetrainConfig(
        backbone="small_cnn", head="global", epochs=args.epochs, input_size=size, augment=augment
    )
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        trained = train_arrays(rc, x, y, xv, yv, Path(tmp))
        ours_seconds = time.monotonic() - started
    predict = keras_logits(trained.model)
    (a, b), threshold = calibrate(yv, predict(xv), rc.threshold_policy, rc.target_recall)
    ours_metrics = binary_metrics(
        yt, sigmoid(np.float32(a) * predict(xt) + np.float32(b)), threshold
    ).as_dict()

    result = {
        "train_images": args.train,
        "validation_images": args.validation,
        "test_images": args.test,
        "train_spec": TRAIN.__repr__(),
        "test_spec": SHIFTED.__repr__(),
        "input_size": size,
        "augment": augment.model_dump(),
        "seed_style": {
            "metrics": seed_metrics,
            "epochs": args.seed_epochs,
            "seconds": round(seed_seconds, 1),
        },
        "inspectd": {
            "metrics": ours_metrics,
            "epochs": trained.epochs_run,
            "seconds": round(ours_seconds, 1),
            "seconds_per_epoch": round(ours_seconds / trained.epochs_run, 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nshifted test set: {args.test} images ({int(yt.sum())} with the mark); trained on {args.train}")
    header = ("recipe", "ROC-AUC", "F1", "precision", "recall", "epochs", "s/epoch")
    print(f"{header[0]:<12}" + "".join(f"{h:>10}" for h in header[1:]))
    for name, r in (("seed-style", result["seed_style"]), ("inspectd", result["inspectd"])):
        m = r["metrics"]
        cells = (
            f"{m['roc_auc']:.4f}",
            f"{m['f1']:.4f}",
            f"{m['precision']:.4f}",
            f"{m['recall']:.4f}",
            str(r["epochs"]),
            f"{r['seconds'] / r['epochs']:.1f}",
        )
        print(f"{name:<12}" + "".join(f"{c:>10}" for c in cells))
    ratio = ours_metrics["roc_auc"] / max(seed_metrics["roc_auc"], 1e-9)
    print(f"ROC-AUC ratio inspectd / seed-style: {ratio:.2f}; results in {args.out}")


if __name__ == "__main__":
    main()
