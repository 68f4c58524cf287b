"""Evaluation reports: metrics that matter when the symbol is rare, a threshold table, the worst errors,
plots, and a short summary. Scores come from the registry version through LiteRT, as in the daemon."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inspectd.model.runtime import sigmoid
from inspectd.ops.labels import Labeled
from inspectd.train.evaluate.metrics import Confusion, Metrics, binary_metrics, platt

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def choose_threshold(
    labels: npt.NDArray[np.int_], scores: npt.NDArray[np.float32], policy: str, target_recall: float
) -> float:
    """best_f1: the threshold with the best F1; target_recall: the highest one that reaches the target."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    if policy == "target_recall":
        reaching = [t for t, r in zip(thresholds, recall[:-1], strict=True) if r >= target_recall]
        return float(max(reaching)) if reaching else float(thresholds.min())
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def operating_points(labels: npt.NDArray[np.int_], scores: npt.NDArray[np.float32]) -> list[list[float]]:
    """Every (precision, recall) a threshold on these scores can give: what the gate compares."""
    if len(set(labels.tolist())) < 2:
        return []
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(labels, scores)
    return [[round(float(p), 6), round(float(r), 6)] for p, r in zip(precision, recall, strict=True)]


@dataclass(frozen=True, slots=True)
class Worst:
    file: str
    score: float


@dataclass(frozen=True, slots=True)
class Report:
    """A version's scores on a labeled set (report.json is ``as_dict()``)."""

    version: str
    metrics: Metrics  # at the version's own threshold
    policy: dict[str, Any]  # name, target_recall, threshold_on_this_set
    threshold_table: list[dict[str, Any]]
    operating_points: list[list[float]]  # every (precision, recall) a threshold gives: the gate's input
    worst_false_positives: list[Worst]
    worst_false_negatives: list[Worst]
    data: str | None = None  # where the labeled set came from

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.data is None:
            del d["data"]
        return d


def build_report(
    version: str,
    threshold: float,
    labels: npt.NDArray[np.int_],
    scores: npt.NDArray[np.float32],
    items: list[Labeled],
    policy: str,
    target_recall: float,
    worst: int = 10,
    data: str | None = None,
) -> Report:
    keep = ("threshold", "precision", "recall", "f1", "confusion_matrix")
    table = [
        {k: v for k, v in binary_metrics(labels, scores, t).as_dict().items() if k in keep}
        for t in sorted({*THRESHOLDS, round(threshold, 4)})
    ]
    negatives = [
        (float(s), i) for s, y, i in zip(scores, labels, items, strict=True) if y == 0 and s >= threshold
    ]
    positives = [
        (float(s), i) for s, y, i in zip(scores, labels, items, strict=True) if y == 1 and s < threshold
    ]
    return Report(
        version=version,
        metrics=binary_metrics(labels, scores, threshold),
        policy={
            "name": policy,
            "target_recall": target_recall,
            "threshold_on_this_set": choose_threshold(labels, scores, policy, target_recall),
        },
        threshold_table=table,
        operating_points=operating_points(labels, scores),
        worst_false_positives=[
            Worst(str(i.path), s) for s, i in sorted(negatives, key=lambda p: -p[0])[:worst]
        ],
        worst_false_negatives=[
            Worst(str(i.path), s) for s, i in sorted(positives, key=lambda p: p[0])[:worst]
        ],
        data=data,
    )


def summary(report: Report) -> str:
    m = report.metrics
    cm = m.confusion_matrix
    auc = "n/a" if m.roc_auc is None else f"{m.roc_auc:.4f}"
    pr_auc = "n/a" if m.pr_auc is None else f"{m.pr_auc:.4f}"
    lines = [
        f"model {report.version} on {m.count} images ({m.positives} with the symbol), "
        f"threshold {m.threshold:.3f}",
        f"  precision {m.precision:.4f}  recall {m.recall:.4f}  F1 {m.f1:.4f}  ROC-AUC {auc}  "
        f"PR-AUC {pr_auc}",
        f"  confusion: TP {cm.tp}  FP {cm.fp}  FN {cm.fn}  TN {cm.tn}",
        f"  {report.policy['name']} threshold on this set: {report.policy['threshold_on_this_set']:.3f}",
    ]
    for worst, title in (
        (report.worst_false_positives, "most confident false positives"),
        (report.worst_false_negatives, "most confident false negatives"),
    ):
        if worst:
            lines.append(
                f"  {title}: " + ", ".join(f"{Path(e.file).name} ({e.score:.3f})" for e in worst[:5])
            )
    return "\n".join(lines)


def write(
    out: Path, report: Report, labels: npt.NDArray[np.int_], scores: npt.NDArray[np.float32]
) -> list[Path]:
    """report.json and the plots; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json"]
    written[0].write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    m = report.metrics

    fig, ax = plt.subplots(figsize=(5, 5))
    fpr, tpr, _ = roc_curve(labels, scores)
    ax.plot(fpr, tpr, label=f"ROC-AUC {m.roc_auc:.4f}")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {report.version}")
    ax.legend(loc="lower right")
    written.append(_save(fig, out / "roc.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    precision, recall, _ = precision_recall_curve(labels, scores)
    ax.plot(recall, precision, label=f"PR-AUC {m.pr_auc:.4f}")
    ax.set(xlabel="recall", ylabel="precision", title=f"precision-recall: {report.version}")
    ax.legend(loc="lower left")
    written.append(_save(fig, out / "pr.png"))

    written.append(_save(confusion_figure(m.confusion_matrix, report.version), out / "confusion.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = [i / 40 for i in range(41)]
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="absent (truth)")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="present (truth)")
    ax.axvline(m.threshold, color="black", linestyle="--", label="threshold")
    ax.set(xlabel="score", ylabel="images", title="scores by true class", yscale="log")
    ax.legend()
    written.append(_save(fig, out / "scores.png"))
    return written


def confusion_figure(cm: Confusion, title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.array([[cm.tn, cm.fp], [cm.fn, cm.tp]])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(grid, cmap="Blues")
    for (r, c), v in np.ndenumerate(grid):
        ax.text(c, r, str(v), ha="center", va="center", color="white" if v > grid.max() / 2 else "black")
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["absent", "present"],
        yticklabels=["absent", "present"],
        xlabel="predicted",
        ylabel="true",
        title=f"confusion: {title}",
    )
    return fig


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def calibrate(
    labels: npt.NDArray[np.int_], logits: npt.NDArray[np.float32], policy: str, target_recall: float
) -> tuple[tuple[float, float], float]:
    """Platt scaling fitted on validation logits, then the operating threshold on the calibrated scores
    by ``policy``: ((a, b), threshold)."""
    a, b = platt(labels, logits)
    scores = sigmoid(np.float32(a) * logits + np.float32(b))
    return (a, b), choose_threshold(labels, scores, policy, target_recall)
