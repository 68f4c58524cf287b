"""Keras callbacks the training recipes share: the learning schedule, the frame-level validation ROC-AUC
of a network that outputs logit maps, the validation confusion matrix for TensorBoard."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inspectd.core import logs
from inspectd.core.registry import TRAINING_HISTORY_FILE
from inspectd.core.retrain_config import RetrainConfig
from inspectd.train.evaluate import report
from inspectd.train.evaluate.metrics import Confusion
from inspectd.train.tf import keras, tensorflow

log = logs.get("inspectd.train.fit")


def schedule(rc: RetrainConfig, first: int = 0) -> list[Any]:
    """Early stopping on the validation ROC-AUC (the best epoch's weights restored) and a learning rate
    cut by 0.3 on a plateau, neither acting before ``rc.min_epochs`` (counted from ``first``, the round's
    first epoch): a MIL head can spend several epochs at chance before it finds the mark. The best epoch
    is tracked from the first."""
    k = keras()

    class Stopping(k.callbacks.EarlyStopping):  # type: ignore[misc,name-defined]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            super().on_epoch_end(epoch, logs)
            if epoch + 1 - first < rc.min_epochs:
                self.model.stop_training = False

    class Plateau(k.callbacks.ReduceLROnPlateau):  # type: ignore[misc,name-defined]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if epoch + 1 - first >= rc.min_epochs:
                super().on_epoch_end(epoch, logs)

    return [
        Stopping(monitor="val_auc", mode="max", patience=rc.patience, restore_best_weights=True),
        Plateau(monitor="val_auc", mode="max", factor=0.3, patience=max(1, rc.patience // 2)),
    ]


def confusion_images(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.int_], logdir: Path, model: Any | None = None
) -> Any:
    """A Keras callback: the validation confusion matrix as a TensorBoard image after every epoch
    (``model``: the frame-level network, when the one being fitted is not)."""
    k = keras()
    tf = tensorflow()
    writer = tf.summary.create_file_writer(str(logdir / "confusion"))

    class ConfusionImages(k.callbacks.Callback):  # type: ignore[misc,name-defined]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            scored = self.model if model is None else model
            predicted = (np.asarray(scored(x, training=False)).reshape(-1) >= 0).astype(int)
            cm = Confusion(
                tn=int(((predicted == 0) & (y == 0)).sum()),
                fp=int(((predicted == 1) & (y == 0)).sum()),
                fn=int(((predicted == 0) & (y == 1)).sum()),
                tp=int(((predicted == 1) & (y == 1)).sum()),
            )
            import matplotlib.pyplot as plt

            buffer = io.BytesIO()
            figure = report.confusion_figure(cm, f"validation, epoch {epoch + 1}")
            figure.savefig(buffer, format="png", dpi=72)
            plt.close(figure)  # pyplot keeps every figure it made until it is closed
            image = tf.image.decode_png(buffer.getvalue(), channels=4)[tf.newaxis]
            with writer.as_default():
                tf.summary.image("confusion_matrix", image, step=epoch)

        def on_train_end(self, logs: dict[str, float] | None = None) -> None:
            writer.flush()  # on disk when the fit ends, not when the process does (one fit may follow)

    return ConfusionImages()


def frame_auc(head: Any, fv: npt.NDArray[np.float32], yv: npt.NDArray[np.int_]) -> Any:
    """A Keras callback that puts the frame-level validation ROC-AUC into the epoch's logs as val_auc
    (for the callbacks after it: early stopping, the learning-rate schedule), when the network being
    fitted outputs logit maps."""
    k = keras()

    class FrameAUC(k.callbacks.Callback):  # type: ignore[misc,name-defined]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            auc = validation_auc(head, fv, yv)
            if logs is not None:
                logs["val_auc"] = auc
            log.info("epoch.validated", epoch=epoch + 1, frame_roc_auc=round(auc, 4))

    return FrameAUC()


def history_rows(run_dir: Path) -> list[Any]:
    """The epoch's wall-clock seconds (``seconds``: training and the callbacks before this one) and the
    Keras history row, appended to the version's history.csv."""
    k = keras()

    class EpochSeconds(k.callbacks.Callback):  # type: ignore[misc,name-defined]
        started = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if logs is not None:
                logs["seconds"] = round(time.monotonic() - self.started, 2)

    return [EpochSeconds(), k.callbacks.CSVLogger(str(run_dir / TRAINING_HISTORY_FILE), append=True)]


def frame_logits(head: Any, f: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    tf = tensorflow()
    run = tf.function(lambda a: head(a, training=False), reduce_retracing=True)
    parts = [np.asarray(run(f[i : i + 64].astype(np.float32))).reshape(-1) for i in range(0, len(f), 64)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def validation_auc(head: Any, fv: npt.NDArray[np.float32], yv: npt.NDArray[np.int_]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(yv, frame_logits(head, fv))) if len(set(yv.tolist())) == 2 else 0.5
