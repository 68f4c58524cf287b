"""Model quality on images inspectd's generator did not draw: python -m benchmarks.quality [--small]

For each target symbol (a circled-plus registration mark, a stylized X) a labeled set is composed from real
material that packages ship (photographs and micrographs, glyphs from Debian's fonts: see
benchmarks/quality_data.py), train and test from disjoint background images and disjoint font lineages.
Then each recipe is trained on ``DATA/<symbol>/train`` and tested on ``DATA/<symbol>/test``:

- inspectd recipes run the real CLI as a maintainer would, with a fresh configuration (registry, runs,
  database in a temporary folder) per run:
  ``inspectd --config CFG retrain --data DATA/<symbol>/train --force [FLAGS]``, then
  ``inspectd --config CFG eval VERSION --data DATA/<symbol>/test``;
- ``seed-tutorial`` is the seed tutorial's recipe (64x64 RGB, two Conv-ReLU-MaxPool layers, a dense head
  with dropout, Adam, binary cross-entropy, 20 epochs, no augmentation, no class weights, threshold 0.5),
  run standalone in its own process on the same folders.

Reported per symbol and recipe: ROC-AUC, PR-AUC, and F1, precision, recall and the confusion matrix at
the threshold the recipe chose *before* seeing the test set (inspectd: the version's threshold, fitted
on retrain's validation split; the tutorial: 0.5), the best F1 any threshold reaches on the test set and
the gap to it, training time and the peak RSS of the training process. JSON goes to
bench-results/quality.json, each run's logs and eval report to bench-results/quality/.

Recipes (RECIPES): the tutorial, the previous default (a small CNN at 128 px), the default command, and
the default with ``--symbol`` (the word ``@symbol`` in FLAGS: the symbol's first glyph rendered from a
training-side font, written to ``DATA/<symbol>/artwork.png``). ``--recipe NAME=FLAGS`` adds (or
replaces) one, FLAGS being extra ``inspectd retrain`` flags, e.g. ``--recipe "mnv3-224=--backbone
mobilenet_v3_small --input-size 224"``, and ``INSPECTD_SECTION__KEY=VALUE`` words: configuration
overrides for that retrain, e.g.
``--recipe "tiles-96=@boxes INSPECTD_RETRAIN__TILE=96 --input-size 96"``, where the word ``@boxes``
imports the symbols' boxes first (``inspectd label --import TRAIN/labels.csv``: tiled training needs
them, and ``--data`` carries none); ``--skip NAME`` drops one.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.quality_data import ARTWORK, LABELS_CSV, SYMBOLS, SetSpec, ensure_sets
from inspectd.core.registry import TRAINING_HISTORY_FILE

ROOT = Path(__file__).resolve().parent.parent
SEED = "@seed"  # the FLAGS of the standalone tutorial baseline
BOXES = "@boxes"  # in FLAGS: `inspectd label --import TRAIN/labels.csv` (the boxes) before retrain
SYMBOL = "@symbol"  # in FLAGS: --symbol with the symbol's artwork (a training-side font's glyph)
# name -> FLAGS: the tutorial, the default before the MIL head on EfficientNet-Lite0 (a small CNN at 128 px,
# no geometric augmentation), the default command, and the default with the symbol's artwork
PREVIOUS_DEFAULT = (
    "--backbone small_cnn --head global --input-size 128 INSPECTD_RETRAIN__AUGMENT__SOURCE_COPIES=0"
)
RECIPES: dict[str, str] = {
    "seed-tutorial": SEED,
    "previous-default": PREVIOUS_DEFAULT,
    "default": "",
    "default+symbol": SYMBOL,
}
REFERENCE = "bundled (no retrain)"  # the row of the version the first retrain compared with
SMALL = SetSpec(train=300, train_present=100, test=150, test_present=50)
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Measured:
    returncode: int
    seconds: float
    peak_rss_mib: float  # of the process and the descendants it waited for
    output: str


def run_measured(
    cmd: list[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Measured:
    """Run ``cmd`` with its output into ``log``; wall time and peak RSS from wait4 (this child's tree,
    not every child this benchmark has had)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    lines: list[str] = []
    with open(log, "w") as fh:
        fh.write("$ " + shlex.join([*(f"{k}={v}" for k, v in (env or {}).items()), *cmd]) + "\n")
        fh.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},  # the log as it happens
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            lines.append(line)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(proc.returncode, time.monotonic() - started, usage.ru_maxrss / 1024.0, "".join(lines))


def inspectd_command() -> list[str]:
    script = Path(sys.executable).parent / "inspectd"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "inspectd"]


def write_config(folder: Path) -> Path:
    """A configuration whose registry, runs, labels and database live in ``folder``."""
    var = folder / "var"
    for name in ("incoming", "processed", "quarantine", "models", "labels", "runs"):
        (var / name).mkdir(parents=True, exist_ok=True)
    cfg = folder / "config.toml"
    cfg.write_text(
        "\n".join(
            [
                "[station]",
                'name = "quality-bench"',
                "[paths]",
                *(
                    f'{n} = "var/{n}"'
                    for n in ("incoming", "processed", "quarantine", "models", "labels", "runs")
                ),
                "[database]",
                f'url = "sqlite:///{var / "inspectd.db"}"',
                "",
            ]
        )
    )
    return cfg


def best_f1(labels: npt.NDArray[np.int_], scores: npt.NDArray[np.float32]) -> tuple[float, float]:
    """The best F1 any threshold reaches on this set, and that threshold."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    i = int(np.argmax(f1))
    return float(f1[i]), float(thresholds[i])


def score_version(
    models: Path, version: str, data: Path
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int_]]:
    """Per-image scores of a registry version on a labeled folder, through the daemon's decode and LiteRT
    path (``inspectd eval`` writes no per-image scores; the best F1 on the test set needs them)."""
    from inspectd.core.registry import ModelRegistry
    from inspectd.core.tiles import view_for
    from inspectd.daemon.intake.decode import DecodeLimits
    from inspectd.model.runtime import Inferencer
    from inspectd.train.data.dataset import folder_examples, score_frames

    inferencer = Inferencer.load(ModelRegistry(models).version_dir(version))
    items = folder_examples(data, EXTENSIONS)
    limits = DecodeLimits(64_000_000, 268_435_456)
    scores, y, _, _ = score_frames(inferencer, items, limits, view_for(inferencer.meta))
    return scores, y


def evaluate(base: list[str], models: Path, version: str, test: Path, logs: Path) -> dict[str, Any]:
    """``inspectd eval VERSION --data TEST`` and what its report says, plus the best F1 on the test set."""
    meta = json.loads((models / "versions" / version / "metadata.json").read_text())
    eval_cmd = [*base, "eval", version, "--data", str(test)]
    print(f"  $ {shlex.join(eval_cmd)}", flush=True)
    evaluated = run_measured(eval_cmd, logs / "eval.log")
    if evaluated.returncode:
        raise RuntimeError(f"eval exited {evaluated.returncode}: see {logs / 'eval.log'}")
    where = re.search(r"^report: (.+)$", evaluated.output, re.MULTILINE)
    if where is None:
        raise RuntimeError(f"no report path in the eval output: see {logs / 'eval.log'}")
    report_path = Path(where.group(1).strip())
    report = json.loads(report_path.read_text())
    shutil.copy(report_path, logs / "eval-report.json")
    shutil.copy(models / "versions" / version / "metadata.json", logs / "metadata.json")
    scores, y = score_version(models, version, test)
    m = report["metrics"]
    if abs(float(m["threshold"]) - float(meta["threshold"])) > 1e-9:
        raise RuntimeError("eval did not use the version's own threshold")
    recomputed = int(((scores >= meta["threshold"]) & (y == 1)).sum())
    if recomputed != m["confusion_matrix"]["tp"] or len(y) != m["count"]:
        raise RuntimeError("the benchmark's own scoring disagrees with inspectd eval's report")
    top, top_threshold = best_f1(y, scores)
    training = meta.get("training", {})
    holdout = meta.get("metrics", {}).get("holdout") or {}
    return {
        "command": {"eval": eval_cmd},
        "version": version,
        "metrics": m,
        "threshold": float(meta["threshold"]),
        "threshold_source": "the version's own (retrain's threshold_policy on its validation split)",
        "best_f1_on_test": top,
        "best_f1_threshold_on_test": top_threshold,
        "policy_threshold_on_test": report["policy"]["threshold_on_this_set"],
        "in_distribution_roc_auc": holdout.get("roc_auc"),
        "in_distribution": "retrain's holdout split of the train folder",
        "epochs": training.get("epochs_run"),
        "input_size": training.get("input_size") or meta.get("input_size"),
        "backbone": training.get("backbone"),
        "quantization": meta.get("quantization"),
        "split": training.get("split"),
        "eval_seconds": round(evaluated.seconds, 1),
        "eval_peak_rss_mib": round(evaluated.peak_rss_mib, 1),
    }


def split_flags(flags: str) -> tuple[dict[str, str], list[str]]:
    """A recipe's FLAGS: ``INSPECTD_SECTION__KEY=VALUE`` words are configuration overrides in the
    environment (any key, e.g. ``INSPECTD_RETRAIN__TILE=96``), the rest ``inspectd retrain`` flags."""
    env: dict[str, str] = {}
    words: list[str] = []
    for word in shlex.split(flags):
        if re.fullmatch(r"INSPECTD_[A-Z0-9_]+=.*", word):
            key, _, value = word.partition("=")
            env[key] = value
        else:
            words.append(word)
    return env, words


def seconds_per_epoch(history: Path) -> float | None:
    """The median epoch's wall-clock seconds in a version's history.csv (its ``seconds`` column)."""
    if not history.is_file():
        return None
    with history.open(newline="") as fh:
        seconds = [float(row["seconds"]) for row in csv.DictReader(fh) if row.get("seconds")]
    return round(statistics.median(seconds), 2) if seconds else None


def run_inspectd(
    name: str,
    flags: list[str],
    train: Path,
    test: Path,
    logs: Path,
    keep: bool,
    reference: Path | None = None,
    env: dict[str, str] | None = None,
    boxes: bool = False,
) -> dict[str, Any]:
    """One recipe through the real CLI in a fresh configuration (``env``: configuration overrides for the
    retrain). ``reference``: also evaluate the version retrain compared with (the bundled model, on a
    fresh registry), with its logs there."""
    cli = inspectd_command()
    tmp = Path(tempfile.mkdtemp(prefix=f"quality-{name}-"))
    models = tmp / "var" / "models"
    try:
        cfg = write_config(tmp)
        base = [*cli, "--config", str(cfg)]
        upgrade = run_measured([*base, "db", "upgrade"], logs / "db-upgrade.log")
        if upgrade.returncode:
            raise RuntimeError(f"db upgrade failed: see {logs / 'db-upgrade.log'}")
        if boxes:  # the symbol's boxes, as a maintainer records them: a labels.csv import
            imported = run_measured(
                [*base, "label", "--import", str(train / LABELS_CSV), "--by", "quality-bench"],
                logs / "label-import.log",
            )
            if imported.returncode:
                raise RuntimeError(f"label --import failed: see {logs / 'label-import.log'}")
        retrain_cmd = [*base, "retrain", "--data", str(train), "--force", *flags]
        print(f"  $ {shlex.join([*(f'{k}={v}' for k, v in (env or {}).items()), *retrain_cmd])}", flush=True)
        retrained = run_measured(retrain_cmd, logs / "retrain.log", env=env)
        if retrained.returncode:
            raise RuntimeError(f"retrain exited {retrained.returncode}: see {logs / 'retrain.log'}")
        found = re.search(r"^(?:NOT )?PROMOTED: (\S+?)\.\s", retrained.output, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no version in the retrain output: see {logs / 'retrain.log'}")
        version = found.group(1)
        result = evaluate(base, models, version, test, logs)
        meta = json.loads((models / "versions" / version / "metadata.json").read_text())
        result["command"] = {"retrain_env": env or {}, "retrain": retrain_cmd, **result["command"]}
        result.update(
            retrain_seconds=round(retrained.seconds, 1),
            retrain_seconds_reported=meta.get("training", {}).get("seconds"),
            retrain_peak_rss_mib=round(retrained.peak_rss_mib, 1),
            seconds_per_epoch=seconds_per_epoch(models / "versions" / version / TRAINING_HISTORY_FILE),
        )
        compared = meta.get("metrics", {}).get("compared_with")
        if reference is not None and compared:
            try:
                ref = evaluate(base, models, compared, test, reference)
            except RuntimeError as exc:
                ref = {"error": str(exc)}
            # in distribution: the compared version on retrain's holdout (retrain's summary.json)
            run_dir = re.search(r"^reports and TensorBoard logs: (.+)$", retrained.output, re.MULTILINE)
            summary = Path(run_dir.group(1).strip()) / "summary.json" if run_dir else None
            active = json.loads(summary.read_text()).get("active") if summary and summary.is_file() else None
            ref["in_distribution_roc_auc"] = (active or {}).get("roc_auc")
            ref["epochs"] = None  # not trained here
            result["reference"] = ref
        return result
    finally:
        if keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run_seed(train: Path, test: Path, logs: Path, epochs: int, seed: int) -> dict[str, Any]:
    out = logs / "seed-result.json"
    cmd = [sys.executable, "-m", "benchmarks.quality", "--baseline", str(train), str(test), str(out)]
    cmd += ["--seed-epochs", str(epochs), "--seed", str(seed)]
    print(f"  $ {shlex.join(cmd)}", flush=True)
    done = run_measured(cmd, logs / "train.log", cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"the tutorial baseline exited {done.returncode}: see {logs / 'train.log'}")
    result: dict[str, Any] = json.loads(out.read_text())
    result.update(
        command={"train_and_test": cmd},
        retrain_seconds=round(done.seconds, 1),
        retrain_peak_rss_mib=round(done.peak_rss_mib, 1),
    )
    return result


# ------------------------------------------------------------------------------------ the tutorial recipe


def _folder_arrays(folder: Path, size: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int_]]:
    """``folder/present`` and ``folder/absent`` as the tutorial reads images: RGB, resized, in [0, 1]."""
    import cv2

    xs, ys = [], []
    for label in ("present", "absent"):
        for path in sorted((folder / label).iterdir()):
            if path.suffix.lower() not in EXTENSIONS:
                continue
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                continue
            rgb = cv2.cvtColor(
                cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
            )
            xs.append(rgb.astype(np.float32) / 255.0)
            ys.append(int(label == "present"))
    return np.stack(xs), np.array(ys, np.int_)


def baseline(train: Path, test: Path, out: Path, epochs: int, seed: int) -> None:
    """The seed tutorial's recipe, trained on ``train`` (a stratified 20% held out for validation, as its
    training loop takes validation arrays) and tested on ``test`` at its sigmoid's 0.5."""
    from inspectd.train.evaluate.metrics import binary_metrics
    from inspectd.train.tf import keras, tensorflow

    tensorflow(threads=os.cpu_count() or 1)
    k = keras()
    k.utils.set_random_seed(seed)
    x, y = _folder_arrays(train, 64)
    rng = np.random.default_rng(seed)
    validation = np.zeros(len(y), bool)
    for label in (0, 1):
        idx = np.flatnonzero(y == label)
        validation[rng.choice(idx, size=max(1, round(0.2 * len(idx))), replace=False)] = True
    layers = k.layers
    model = k.Sequential(
        [
            k.Input((64, 64, 3)),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    started = time.monotonic()
    model.fit(
        x[~validation],
        y[~validation],
        epochs=epochs,
        batch_size=32,
        validation_data=(x[validation], y[validation]),
        verbose=2,
    )
    fit_seconds = time.monotonic() - started
    from sklearn.metrics import roc_auc_score

    validation_scores = np.asarray(model.predict(x[validation], verbose=0), np.float32).reshape(-1)
    xt, yt = _folder_arrays(test, 64)
    scores = np.asarray(model.predict(xt, verbose=0), np.float32).reshape(-1)
    top, top_threshold = best_f1(yt, scores)
    result = {
        "metrics": binary_metrics(yt, scores, 0.5).as_dict(),
        "threshold": 0.5,
        "threshold_source": "fixed 0.5 (the tutorial's sigmoid output)",
        "best_f1_on_test": top,
        "best_f1_threshold_on_test": top_threshold,
        "in_distribution_roc_auc": float(roc_auc_score(y[validation], validation_scores)),
        "in_distribution": "the tutorial's validation split of the train folder",
        "epochs": epochs,
        "input_size": 64,
        "backbone": "tutorial_cnn",
        "fit_seconds": round(fit_seconds, 1),
        "seconds_per_epoch": round(fit_seconds / epochs, 2),
        "split": {"train": int((~validation).sum()), "validation": int(validation.sum())},
    }
    out.write_text(json.dumps(result, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------- main


def parse_recipes(extra: list[str], skip: list[str]) -> dict[str, str]:
    recipes = dict(RECIPES)
    for item in extra:
        name, sep, flags = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--recipe {item!r}: expected NAME=FLAGS")
        recipes[name] = flags
    for name in skip:
        recipes.pop(name, None)
    return recipes


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def table(results: list[dict[str, Any]]) -> str:
    header = (
        "symbol",
        "recipe",
        "ROC-AUC",
        "PR-AUC",
        "thr",
        "F1",
        "prec",
        "recall",
        "bestF1",
        "gap",
        "in-dist AUC",
        "TP/FP/FN/TN",
        "epochs",
        "s/epoch",
        "train s",
        "RSS MiB",
    )
    rows = [header]
    for r in results:
        if "error" in r:
            rows.append((r["symbol"], r["recipe"], "failed: " + r["error"][:60], *[""] * (len(header) - 3)))
            continue
        m = r["metrics"]
        cm = m["confusion_matrix"]
        rows.append(
            (
                r["symbol"],
                r["recipe"],
                f"{m['roc_auc']:.3f}",
                f"{m['pr_auc']:.3f}",
                f"{r['threshold']:.3f}",
                f"{m['f1']:.3f}",
                f"{m['precision']:.3f}",
                f"{m['recall']:.3f}",
                f"{r['best_f1_on_test']:.3f}",
                f"{r['best_f1_on_test'] - m['f1']:.3f}",
                _num(r.get("in_distribution_roc_auc"), "{:.3f}"),
                f"{cm['tp']}/{cm['fp']}/{cm['fn']}/{cm['tn']}",
                str(r.get("epochs") or "-"),
                _num(r.get("seconds_per_epoch"), "{:.1f}"),
                _num(r.get("retrain_seconds"), "{:.0f}"),
                _num(r.get("retrain_peak_rss_mib"), "{:.0f}"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="300 train / 150 test images per symbol")
    parser.add_argument("--train", type=int, help="train images per symbol (default 1200)")
    parser.add_argument("--train-present", type=int, help="of which with the symbol (default a third)")
    parser.add_argument("--test", type=int, help="test images per symbol (default 600)")
    parser.add_argument("--test-present", type=int, help="of which with the symbol (default a quarter)")
    parser.add_argument("--data-seed", type=int, default=SetSpec().seed, help="the generator's seed")
    parser.add_argument("--symbol", action="append", choices=sorted(SYMBOLS), help="only these symbols")
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME=FLAGS")
    parser.add_argument("--skip", action="append", default=[], metavar="NAME")
    parser.add_argument("--epochs", type=int, help="--epochs for every inspectd recipe that sets none")
    parser.add_argument("--seed-epochs", type=int, default=20, help="the tutorial recipe's epochs")
    parser.add_argument("--seed", type=int, default=11, help="the tutorial recipe's random seed")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench-results" / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "quality.json")
    parser.add_argument("--logs", type=Path, default=ROOT / "bench-results" / "quality")
    parser.add_argument("--workers", type=int, default=2, help="processes generating images")
    parser.add_argument("--data-only", action="store_true", help="generate (or find) the sets and stop")
    parser.add_argument("--keep", action="store_true", help="keep each run's temporary registry")
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the row of the model retrain compares with (the bundled model, no retraining)",
    )
    parser.add_argument(
        "--baseline", nargs=3, type=Path, metavar=("TRAIN", "TEST", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.baseline:
        train, test, out = args.baseline
        baseline(train, test, out, epochs=args.seed_epochs, seed=args.seed)
        return

    spec = SMALL if args.small else SetSpec()
    spec = replace(spec, seed=args.data_seed, symbols=tuple(args.symbol or spec.symbols))
    for key in ("train", "train_present", "test", "test_present"):
        if getattr(args, key) is not None:
            spec = replace(spec, **{key: getattr(args, key)})
    if args.train is not None and args.train_present is None:
        spec = replace(spec, train_present=args.train // 3)
    if args.test is not None and args.test_present is None:
        spec = replace(spec, test_present=args.test // 4)
    recipes = parse_recipes(args.recipe, args.skip)
    args.out, args.logs, args.cache = args.out.resolve(), args.logs.resolve(), args.cache.resolve()

    started = time.monotonic()
    root, info = ensure_sets(spec, args.cache, args.workers)
    generated = time.monotonic() - started
    print(f"data: {root} ({generated:.0f} s)")
    for side in ("train", "test"):
        print(
            f"  {side}: {len(info['backgrounds'][side])} background images, "
            f"font lineages {', '.join(info['font_lineages'][side])}"
        )
    if args.data_only:
        return

    results: list[dict[str, Any]] = []
    for symbol in spec.symbols:
        train, test = root / symbol / "train", root / symbol / "test"
        reference: Path | None = args.logs / symbol / REFERENCE if args.reference else None
        for name, flags in recipes.items():
            logs = args.logs / symbol / name
            print(f"{symbol} / {name}", flush=True)
            # the code this recipe runs (a shared working tree can move between recipes)
            entry: dict[str, Any] = {"symbol": symbol, "recipe": name, "flags": flags, "code": code_state()}
            try:
                if flags == SEED:
                    entry.update(run_seed(train, test, logs, args.seed_epochs, args.seed))
                else:
                    env, extra = split_flags(flags)
                    boxes = BOXES in extra
                    extra = [w for w in extra if w != BOXES]
                    # @symbol: the artwork drawn from a training-side font (quality_data.write_artwork)
                    extra = [
                        w
                        for e in extra
                        for w in (("--symbol", str(root / symbol / ARTWORK)) if e == SYMBOL else (e,))
                    ]
                    if args.epochs is not None and "--epochs" not in extra:
                        extra += ["--epochs", str(args.epochs)]
                    entry.update(
                        run_inspectd(name, extra, train, test, logs, args.keep, reference, env, boxes)
                    )
                    if reference is not None:
                        ref = entry.pop("reference", None)
                        if ref is not None:
                            results.append(
                                {
                                    "symbol": symbol,
                                    "recipe": REFERENCE,
                                    "flags": "",
                                    "code": entry["code"],
                                    **ref,
                                }
                            )
                            reference = None
            except RuntimeError as exc:
                entry["error"] = str(exc)
                print(f"  FAILED: {exc}", flush=True)
            results.append(entry)
            if "error" not in entry:
                m = entry["metrics"]
                print(
                    f"  ROC-AUC {m['roc_auc']:.3f}  F1 {m['f1']:.3f} at {entry['threshold']:.3f} "
                    f"(best on test {entry['best_f1_on_test']:.3f}; in-distribution ROC-AUC "
                    f"{_num(entry.get('in_distribution_roc_auc'), '{:.3f}')})  "
                    f"{entry['retrain_seconds']:.0f} s  {entry['retrain_peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
            write(args.out, spec, info, results, time.monotonic() - started)
    print()
    print(table(results))
    for symbol in spec.symbols:
        total, present = spec.count("test")
        print(f"{symbol}: F1 of calling every test image present: {2 * present / (total + present):.3f}")
    print(f"\n{time.monotonic() - started:.0f} s in all; results in {args.out}, logs in {args.logs}")


def code_state() -> dict[str, Any]:
    """The commit measured, and the files of inspectd/ that differed from it (read-only git calls)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True, check=False)
        return done.stdout if done.returncode == 0 else ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "inspectd").splitlines() if line]
    return {"commit": git("rev-parse", "HEAD").strip(), "inspectd_changes": changed}


def write(
    out: Path, spec: SetSpec, info: dict[str, Any], results: list[dict[str, Any]], seconds: float
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "code_at_end": code_state(),
        "spec": asdict(spec),
        "f1_of_calling_every_test_image_present": round(
            2 * spec.test_present / (spec.test + spec.test_present), 4
        ),
        "data": info,
        "cpus": os.cpu_count(),
        "seconds": round(seconds, 1),
        "results": results,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
