"""Classification metrics on a labeled set (the rare class is the positive one)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Confusion:
    tn: int
    fp: int
    fn: int
    tp: int


@dataclass(frozen=True, slots=True)
class Metrics:
    """At one threshold; ``roc_auc`` and ``pr_auc`` are None when the set has one class only."""

    count: int
    positives: int
    threshold: float
    precision: float
    recall: float
    f1: float
    roc_auc: float | None
    pr_auc: float | None
    accuracy: float
    confusion_matrix: Confusion

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Metrics:
        return cls(**{**d, "confusion_matrix": Confusion(**d["confusion_matrix"])})


def binary_metrics(
    labels: npt.NDArray[np.int_], scores: npt.NDArray[np.float32], threshold: float
) -> Metrics:
    from sklearn.metrics import (
        average_precision_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    both = len(set(labels.tolist())) == 2
    return Metrics(
        count=len(labels),
        positives=int(labels.sum()),
        threshold=threshold,
        precision=float(precision_score(labels, predicted, zero_division=0)),
        recall=float(recall_score(labels, predicted, zero_division=0)),
        f1=float(f1_score(labels, predicted, zero_division=0)),
        roc_auc=float(roc_auc_score(labels, scores)) if both else None,
        pr_auc=float(average_precision_score(labels, scores)) if both else None,
        accuracy=(tp + tn) / max(len(labels), 1),
        confusion_matrix=Confusion(tn, fp, fn, tp),
    )


def platt(labels: npt.NDArray[np.int_], logits: npt.NDArray[np.float32]) -> tuple[float, float]:
    """Platt scaling: the (a, b) of sigmoid(a * logit + b) that best fits the labels."""
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e4).fit(logits.reshape(-1, 1), labels)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])
