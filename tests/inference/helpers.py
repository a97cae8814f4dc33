"""A served test stack: own topics, group and data dir, features for known entities, a champion model.

Shared by the inference, monitoring, retraining and load tests, which all need a worker with something
real to score.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from streamscore.features.request import REQUEST_FEATURES
from streamscore.models import ModelCard, Registry, build_profile, export_onnx
from streamscore.settings import Settings
from streamscore.store import OnlineWriter, apply_definitions, feature_store, quiet_feast
from streamscore.training import service_features
from tests.kafka.helpers import create_topic

__all__ = ["KNOWN_USERS", "MERCHANTS", "NOW_MS", "register_model", "served_settings"]

KNOWN_USERS = [f"u-known-{i:03d}" for i in range(40)]
MERCHANTS = [f"m-known-{i:02d}" for i in range(5)]
NOW_MS = int(time.time() * 1000)


def register_model(settings: Settings, seed: int) -> int:
    """A small real MLP with the card serving expects, registered and promoted to champion."""
    with quiet_feast():
        stored = [name for _, name in service_features(feature_store(settings), "fraud_model_v1")]
    features = (*stored, *REQUEST_FEATURES)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(features))).astype(np.float32)
    y = (x[:, 0] + x[:, -1] + rng.normal(size=400) > 0).astype(int)
    model = Pipeline(
        [("scale", StandardScaler()), ("mlp", MLPClassifier((8,), max_iter=500, tol=1e-3, random_state=seed))]
    ).fit(x, y)
    card = ModelCard(
        model_name=settings.model.name, kind="mlp", feature_service="fraud_model_v1", features=features,
        defaults=tuple(float(seed) for _ in features), request_features=REQUEST_FEATURES, threshold=0.5,
        data_start="2026-01-01T00:00:00+00:00", data_end="2026-01-02T00:00:00+00:00", seed=seed,
    )  # fmt: skip
    profile = build_profile({**{f: x[:, j] for j, f in enumerate(features)}, "score": model.predict_proba(x)[:, 1]})
    registry = Registry(settings)
    with registry.start_run(f"test-{seed}") as run_id:
        info = registry.log_candidate(
            run_id, onnx_bytes=export_onnx(model, card), card=card, profile=profile, report={}, params={}, metrics={}
        )
    registry.promote(info.version, reason="test")
    return info.version


def served_settings(settings: Settings, data_dir: Path) -> Settings:
    """Own topics, group, data dir (Feast registry, MLflow); features for the known users; model v1."""
    tag = uuid.uuid4().hex[:8]
    topics = settings.topics.model_copy(
        update={"score_requests": f"req-{tag}", "predictions": f"pred-{tag}", "dead_letters": f"dlq-{tag}",
                "drift": f"drift-{tag}"}
    )  # fmt: skip
    for name, partitions in ((topics.score_requests, 2), (topics.predictions, 1), (topics.dead_letters, 1),
                             (topics.drift, 1)):  # fmt: skip
        create_topic(settings, name, partitions)
    s = settings.model_copy(
        update={
            "data_dir": data_dir,
            "topics": topics,
            "inference": settings.inference.model_copy(
                update={"group_id": f"inference-{tag}", "reload_interval_s": 0.3, "max_delay_ms": 5}
            ),
        }
    )
    apply_definitions(s)
    store = feature_store(s)
    with quiet_feast():
        columns = service_features(store, "fraud_model_v1")
    rng = np.random.default_rng(0)
    with OnlineWriter(s, store) as writer:
        for view, ids in (("user_transactions", KNOWN_USERS), ("merchant_transactions", MERCHANTS)):
            names = [n for v, n in columns if v == view]
            values = {n: rng.integers(1, 50, len(ids)).astype(np.float64) for n in names}
            writer.write(view, ids, values, np.full(len(ids), NOW_MS - 60_000, dtype=np.int64))
    register_model(s, seed=1)
    return s
