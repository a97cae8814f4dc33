"""The two model families, fitted the way fraud data needs: imbalance-aware, early-stopped on the validation
window, deterministic for a seed.

Missing inputs are imputed with the training window's medians *before* fitting, and those medians become
the model's declared defaults, so a scorer filling gaps with the card's defaults feeds the model exactly
what it was trained on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["Fitted", "Kind", "fit", "impute", "medians"]

Kind = Literal["mlp", "gbt"]
EpochProgress = Callable[[int, int], None]

_PATIENCE = 5  # epochs (or boosting rounds / _GBT_STEP) without a better validation PR-AUC
_GBT_STEP = 10
_GBT_MAX_ROUNDS = 300


@dataclass(frozen=True)
class Fitted:
    """A fitted model with the history that chose it."""

    model: Any  # Pipeline(scale, mlp) or HistGradientBoostingClassifier: what export_onnx takes
    kind: Kind
    epochs: int  # epochs (mlp) or boosting rounds (gbt) of the kept model
    validation_pr_auc: list[float]  # after each epoch / step, the curve early stopping read


def medians(x: np.ndarray) -> np.ndarray:
    """Per-column median ignoring NaN; 0 for a column with no values at all."""
    with np.errstate(all="ignore"):
        present = ~np.isnan(x)
        out = np.zeros(x.shape[1])
        for j in range(x.shape[1]):
            if present[:, j].any():
                out[j] = float(np.median(x[present[:, j], j]))
    return out


def impute(x: np.ndarray, defaults: np.ndarray) -> np.ndarray:
    """``x`` with each NaN replaced by its column's default, as float32 (the ONNX input type)."""
    return np.where(np.isnan(x), defaults[None, :], x).astype(np.float32)


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    """Weights that give both classes the same total, normalised to mean 1 so learning rates keep meaning."""
    positives = max(int(y.sum()), 1)
    negatives = max(len(y) - positives, 1)
    w = np.where(y == 1, len(y) / (2.0 * positives), len(y) / (2.0 * negatives))
    return np.asarray(w / w.mean(), dtype=np.float64)


def fit(
    kind: Kind,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    *,
    seed: int,
    max_epochs: int,
    progress: EpochProgress | None = None,
) -> Fitted:
    """Fit ``kind`` on imputed float32 inputs; keep the epoch with the best validation PR-AUC.

    PR-AUC rather than loss or ROC-AUC: with 1% positives it is what moves when the model finds more fraud
    at the top of the ranking, which is what the threshold acts on.
    """
    if kind == "mlp":
        return _fit_mlp(train, validation, seed=seed, max_epochs=max_epochs, progress=progress)
    return _fit_gbt(train, validation, seed=seed, progress=progress)


def _fit_mlp(
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    *,
    seed: int,
    max_epochs: int,
    progress: EpochProgress | None,
) -> Fitted:
    (x, y), (xv, yv) = train, validation
    scaler = StandardScaler().fit(x)
    xs, xvs = scaler.transform(x), scaler.transform(xv)
    weights = _balanced_weights(y)
    mlp = MLPClassifier(
        hidden_layer_sizes=(32, 16), activation="relu", alpha=1e-4, batch_size=256, learning_rate_init=1e-3,
        random_state=seed, shuffle=True,
    )  # fmt: skip
    history: list[float] = []
    best: MLPClassifier | None = None
    best_epoch = 0
    for epoch in range(1, max_epochs + 1):
        mlp.partial_fit(xs, y, classes=np.array([0, 1]), sample_weight=weights)
        history.append(float(average_precision_score(yv, mlp.predict_proba(xvs)[:, 1])))
        if best is None or history[-1] > history[best_epoch - 1]:
            best, best_epoch = copy.deepcopy(mlp), epoch
        if progress is not None:
            progress(epoch, max_epochs)
        if epoch - best_epoch >= _PATIENCE:
            break
    assert best is not None
    if progress is not None:
        progress(max_epochs, max_epochs)
    return Fitted(Pipeline([("scale", scaler), ("mlp", best)]), "mlp", best_epoch, history)


def _fit_gbt(
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    *,
    seed: int,
    progress: EpochProgress | None,
) -> Fitted:
    (x, y), (xv, yv) = train, validation
    model = HistGradientBoostingClassifier(
        learning_rate=0.1, max_leaf_nodes=31, early_stopping=False, warm_start=True, random_state=seed, max_iter=0
    )
    weights = _balanced_weights(y)
    history: list[float] = []
    best: HistGradientBoostingClassifier | None = None
    best_rounds = 0
    for rounds in range(_GBT_STEP, _GBT_MAX_ROUNDS + 1, _GBT_STEP):
        model.set_params(max_iter=rounds)
        model.fit(x, y, sample_weight=weights)
        history.append(float(average_precision_score(yv, model.predict_proba(xv)[:, 1])))
        if best is None or history[-1] > max(history[:-1], default=-1.0):
            best, best_rounds = copy.deepcopy(model), rounds
        if progress is not None:
            progress(rounds, _GBT_MAX_ROUNDS)
        if (rounds - best_rounds) // _GBT_STEP >= _PATIENCE:
            break
    assert best is not None
    if progress is not None:
        progress(_GBT_MAX_ROUNDS, _GBT_MAX_ROUNDS)
    return Fitted(best, "gbt", best_rounds, history)
