"""`streamscore train`: training set → fit → ONNX → equivalence check → gate → registry, in that order.

Every check runs before anything is registered: an empty window, too few frauds, missing offline
features, an ONNX graph that disagrees with its source model or does not load all stop the job with one
error and leave the registry as it was. A candidate that loads and agrees is registered (alias
``challenger``) with its report whether or not it passes the gate; only a pass moves ``champion``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from streamscore.models.card import ModelCard
from streamscore.models.profile import build_profile
from streamscore.settings import Settings
from streamscore.training.dataset import SPLITS, TrainingSet, build_training_set
from streamscore.training.gate import GateReport, decide, evaluate, f1_threshold
from streamscore.training.trainers import Fitted, Kind, fit, impute, medians

__all__ = ["Stage", "TrainResult", "train"]

# (stage, done, total): "dataset" in label rows, "fit" in epochs or boosting rounds.
Stage = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TrainResult:
    """What happened, for the summary table and ``--json``."""

    card: ModelCard
    gate: GateReport
    version: int
    promoted: bool
    sha256: str
    max_abs_diff: float
    provider: str
    rows: dict[str, int]
    positives: dict[str, int]
    epochs: int
    # Wall time per phase: dataset (the point-in-time training set), fit, export (ONNX, its equivalence check and
    # load), gate (test metrics, baseline, champion), register (drift profile, MLflow run, promotion).
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "promoted": self.promoted, "sha256": self.sha256, "kind": self.card.kind,
            "features": list(self.card.features), "threshold": self.card.threshold, "metrics": self.card.metrics,
            "windows": self.card.windows, "max_abs_diff": self.max_abs_diff, "provider": self.provider,
            "rows": self.rows, "positives": self.positives, "epochs": self.epochs, "gate": self.gate.to_dict(),
            "seconds": self.seconds,
        }  # fmt: skip


def _champion_metrics(
    settings: Settings, registry: Any, data: TrainingSet
) -> tuple[dict[str, float] | None, int | None, str | None]:
    """The champion's metrics on this test window, or why it could not be scored on it."""
    from streamscore.models.runtime import open_session

    champion = registry.champion()
    if champion is None:
        return None, None, None
    onnx_bytes, info = registry.fetch(champion.version)
    session = open_session(onnx_bytes, expected_sha256=info.sha256, providers="cpu")
    missing = [f for f in session.card.features if f not in data.frame.columns]
    if missing:
        return None, champion.version, f"it needs inputs this training set lacks: {missing}"
    rows = data.frame[data.frame["split"] == "test"]
    x = impute(rows[list(session.card.features)].to_numpy(np.float64), np.asarray(session.card.defaults))
    return evaluate(rows["label"].to_numpy(), session.predict(x)), champion.version, None


def train(
    settings: Settings,
    *,
    events: Path,
    start: datetime,
    end: datetime,
    kind: Kind = "mlp",
    seed: int = 0,
    progress: Stage | None = None,
) -> TrainResult:
    """Train, check, register and (if the gate passes) promote one model; see the module docstring."""
    from streamscore.models.onnx_export import check_equivalence, export_onnx, source_scores
    from streamscore.models.registry import Registry
    from streamscore.models.runtime import open_session, sha256_hex
    from streamscore.store import feature_store

    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    store = feature_store(settings)
    on_rows = None if progress is None else lambda done, total: progress("dataset", done, total)
    data = build_training_set(settings, store, events, start, end, progress=on_rows)
    seconds["dataset"] = time.perf_counter() - clock

    clock = time.perf_counter()
    raw = {name: data.split(name) for name in SPLITS}
    defaults = medians(raw["train"][0])
    inputs = {name: (impute(x, defaults), y) for name, (x, y) in raw.items()}
    fitted: Fitted = fit(
        kind, inputs["train"], inputs["validation"], seed=seed, max_epochs=settings.training.max_epochs,
        progress=None if progress is None else lambda d, t: progress("fit", d, t),
    )  # fmt: skip
    seconds["fit"] = time.perf_counter() - clock

    clock = time.perf_counter()
    x_test, y_test = inputs["test"]
    metrics = evaluate(y_test, source_scores(fitted.model, x_test))
    validation_scores = source_scores(fitted.model, inputs["validation"][0])
    card = ModelCard(
        model_name=settings.model.name,
        kind=kind,
        feature_service=settings.training.feature_service,
        features=data.features,
        defaults=tuple(float(d) for d in defaults),
        request_features=data.request_features,
        threshold=f1_threshold(inputs["validation"][1], validation_scores),
        data_start=start.isoformat(),
        data_end=end.isoformat(),
        seed=seed,
        windows={k: (a.isoformat(), b.isoformat()) for k, (a, b) in data.windows.items()},
        metrics=metrics,
    )
    scoring = time.perf_counter() - clock  # the candidate's test metrics and threshold: counted in the gate

    clock = time.perf_counter()
    onnx_bytes = export_onnx(fitted.model, card)
    max_abs_diff = check_equivalence(onnx_bytes, fitted.model, x_test, settings.training.equivalence_tolerance)
    sha256 = sha256_hex(onnx_bytes)
    session = open_session(
        onnx_bytes, expected_sha256=sha256, providers=settings.model.providers,
        intra_op_threads=settings.model.intra_op_threads,
    )  # fmt: skip
    seconds["export"] = time.perf_counter() - clock

    clock = time.perf_counter()
    prevalence = float(inputs["train"][1].mean())
    baseline = evaluate(y_test, np.full(len(y_test), prevalence))
    registry = Registry(settings)
    champion, champion_version, problem = _champion_metrics(settings, registry, data)
    gate = decide(
        metrics, baseline, champion, margin=settings.training.gate_margin, champion_version=champion_version,
        champion_problem=problem,
    )  # fmt: skip
    seconds["gate"] = scoring + time.perf_counter() - clock

    clock = time.perf_counter()
    x_train = inputs["train"][0]
    missing = {name: np.isnan(raw["train"][0][:, j]) for j, name in enumerate(data.features)}
    profile = build_profile(
        {**{name: x_train[:, j] for j, name in enumerate(data.features)}, "score": session.predict(x_train)},
        missing,
    )
    rows = {name: len(inputs[name][1]) for name in SPLITS}
    positives = {name: int(inputs[name][1].sum()) for name in SPLITS}
    params: dict[str, str | int | float] = {
        "kind": kind, "seed": seed, "start": start.isoformat(), "end": end.isoformat(), "events": str(events),
        "feature_service": card.feature_service, "epochs": fitted.epochs, "threshold": card.threshold,
        "gate_margin": settings.training.gate_margin,
    }  # fmt: skip
    run_metrics = {
        **{f"test_{k}": v for k, v in metrics.items()},
        **{f"baseline_{k}": v for k, v in baseline.items()},
        **{f"rows_{k}": float(v) for k, v in rows.items()},
        "max_abs_diff": max_abs_diff,
    }
    with registry.start_run(f"train-{kind}-seed{seed}", tags=_lineage_tags(store, settings, data)) as run_id:
        version = registry.log_candidate(
            run_id, onnx_bytes=onnx_bytes, card=card, profile=profile, report=gate.to_dict(), params=params,
            metrics=run_metrics,
        )  # fmt: skip
    if gate.passed:
        registry.promote(version.version, reason="; ".join(gate.reasons))
    seconds["register"] = time.perf_counter() - clock
    return TrainResult(
        card, gate, version.version, gate.passed, sha256, max_abs_diff, session.provider, rows, positives,
        fitted.epochs, seconds,
    )  # fmt: skip


def _lineage_tags(store: Any, settings: Settings, data: TrainingSet) -> dict[str, str]:
    """The run tags Feast's MLflow integration writes when it logs a retrieval, so Feast's own resolver
    (``feast.mlflow.resolve_features``) and UI link this model version to its feature service."""
    from streamscore.store import quiet_feast
    from streamscore.training.dataset import service_features

    with quiet_feast():
        refs = [f"{view}:{name}" for view, name in service_features(store, settings.training.feature_service)]
    return {
        "feast.project": store.project,
        "feast.retrieval_type": "historical",
        "feast.feature_service": settings.training.feature_service,
        "feast.feature_views": ",".join(sorted({r.split(":")[0] for r in refs})),
        "feast.feature_refs": ",".join(refs),
        "feast.entity_count": str(len(data.frame)),
    }
