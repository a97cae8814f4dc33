"""The validation gate: a model is promoted only if, on the same test window, it beats both a trivial
baseline and the serving champion by a margin, on ROC-AUC (ranking) and PR-AUC (finding the rare fraud).

The trivial baseline scores every row with the training prevalence: ROC-AUC 0.5 and PR-AUC equal to the
test window's fraud rate. A model that cannot beat it has learned nothing; one that cannot beat the
champion by the margin is not worth a deployment's risk.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1]); good = np.array([0.1, 0.2, 0.8, 0.9])
>>> report = decide(evaluate(y, good), evaluate(y, np.full(4, 0.5)), None, margin=0.01)
>>> report.passed, report.reasons[0]
(True, 'roc_auc 1.0000 beats baseline 0.5000 by >= 0.01')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = ["METRICS", "GateReport", "decide", "evaluate", "f1_threshold"]

METRICS = ("roc_auc", "pr_auc")


def evaluate(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC-AUC and PR-AUC (average precision) of ``scores`` against labels ``y``, with the counts."""
    return {
        "roc_auc": float(roc_auc_score(y, scores)),
        "pr_auc": float(average_precision_score(y, scores)),
        "rows": float(len(y)),
        "positives": float(np.sum(y)),
    }


def f1_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the best F1 on ``y``: the decision point the model card declares."""
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], y[order].astype(np.float64)
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(s) + 1)
    recall = tp / max(hits.sum(), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    # Only positions where the score changes are real thresholds (ties share a decision).
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    best = int(np.argmax(np.where(last_of_tie, f1, -1.0)))
    return float(s[best])


@dataclass(frozen=True)
class GateReport:
    """Why a candidate passed or failed; logged with the run and printed by ``streamscore train``."""

    passed: bool
    margin: float
    candidate: dict[str, float]
    baseline: dict[str, float]
    champion: dict[str, float] | None
    champion_version: int | None = None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    candidate: dict[str, float],
    baseline: dict[str, float],
    champion: dict[str, float] | None,
    *,
    margin: float,
    champion_version: int | None = None,
    champion_problem: str | None = None,
) -> GateReport:
    """Pass only when every metric beats the baseline and the champion (if any) by ``margin``.

    ``champion_problem`` says why an existing champion could not be scored on this window: the gate then
    fails, because "better than a model we could not measure" is not evidence.
    """
    reasons: list[str] = []
    passed = True
    rivals: list[tuple[str, dict[str, float] | None]] = [("baseline", baseline), ("champion", champion)]
    for rival, metrics in rivals:
        if metrics is None:
            continue
        for metric in METRICS:
            ok = candidate[metric] >= metrics[metric] + margin
            passed &= ok
            verb = "beats" if ok else "does not beat"
            reasons.append(f"{metric} {candidate[metric]:.4f} {verb} {rival} {metrics[metric]:.4f} by >= {margin:g}")
    if champion_problem is not None:
        passed = False
        reasons.append(f"champion v{champion_version} could not be compared: {champion_problem}")
    elif champion is None:
        reasons.append("no champion yet: the baseline is the only rival")
    return GateReport(passed, margin, candidate, baseline, champion, champion_version, reasons)
