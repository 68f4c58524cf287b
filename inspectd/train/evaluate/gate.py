"""The promotion gate: is a candidate measurably no worse than the active model on the same holdout?"""

from __future__ import annotations

from inspectd.core.retrain_config import GateConfig
from inspectd.train.evaluate.report import Report


def gate(candidate: Report, active: Report | None, rules: GateConfig) -> tuple[bool, str]:
    """No worse on the same holdout: a ranking as good (ROC-AUC), and the active model's operating point
    within reach — some threshold of the candidate gives at least the active model's precision with at
    least its recall (less ``max_recall_drop``). A model that calls nearly everything present has a high
    recall at a useless precision; matching its recall at its precision is what "no worse" means."""
    if active is None:
        return True, "no active model to compare with"
    c, a = candidate.metrics, active.metrics
    reach = recall_at_precision(candidate.operating_points, a.precision)
    reach = max(reach, c.recall if c.precision >= a.precision else 0.0)
    recall_drop = a.recall - reach
    auc_drop = (a.roc_auc or 0.0) - (c.roc_auc or 0.0)
    facts = (
        f"at the active model's precision {a.precision:.4f} recall {reach:.4f} vs {a.recall:.4f} "
        f"(at its own threshold: precision {c.precision:.4f}, recall {c.recall:.4f}), "
        f"ROC-AUC {c.roc_auc or 0.0:.4f} vs {a.roc_auc or 0.0:.4f} "
        f"(allowed drops {rules.max_recall_drop}, {rules.max_roc_auc_drop})"
    )
    if recall_drop > rules.max_recall_drop + 1e-12 or auc_drop > rules.max_roc_auc_drop + 1e-12:
        return False, "candidate is worse than the active model: " + facts
    return True, "candidate is no worse than the active model: " + facts


def recall_at_precision(points: list[list[float]], precision: float) -> float:
    """The highest recall among operating points with at least ``precision`` (0 when none has)."""
    return max((r for p, r in points if p >= precision - 1e-12), default=0.0)
