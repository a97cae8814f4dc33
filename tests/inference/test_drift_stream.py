"""Drift reports from a real worker on generated traffic: flagged with ``drift_at``, quiet without it.

One generated stream (seed 1) is cut in three by event time: the first part is the history, backfilled into the
online store; the second is the reference, fed through the worker's own :class:`Scorer` to get exactly the
inputs serving builds, on which the model is fitted and its reference profile taken, as training does; the
third is the live traffic, sent as score requests with the transactions (the delayed labels) behind them. The
drifting variant is the same stream with ``drift_at`` at the start of the live part, so everything before it is
identical. Each worker run has its own consumer group and topics; reports are read back through Avro.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from streamscore.features import backfill, load_plans, rules_for
from streamscore.features.request import REQUEST_FEATURES
from streamscore.generator import GeneratorConfig, generate, write_parquet
from streamscore.generator.sinks import score_request
from streamscore.inference import InferenceWorker, Scorer
from streamscore.kafka import Consumer, Producer
from streamscore.models import ModelCard, Registry, build_profile, export_onnx, load_model
from streamscore.serde import Serde
from streamscore.settings import Settings
from streamscore.store import OnlineWriter, apply_definitions, feature_store, quiet_feast
from streamscore.store.reader import OnlineReader
from streamscore.training import service_features
from tests.kafka.helpers import create_topic

pytestmark = pytest.mark.integration

POPULATION: dict[str, Any] = {"users": 300, "merchants": 60, "fraud_rate": 0.03, "seed": 1, "rate": 2.0}
EVENTS = 14_000
HISTORY, REFERENCE = 8_000, 3_000  # events in the first two parts (by event time); the rest is live


@dataclass(frozen=True)
class Stage:
    settings: Settings
    stream: GeneratorConfig
    live_start: datetime
    version: int


def _part(config: GeneratorConfig, lo: datetime, hi: datetime | None = None) -> list[dict[str, Any]]:
    """The stream's transactions with ``lo <= event_time < hi``, in emission order."""
    return [
        t for chunk in generate(config) for t in chunk if lo <= t["event_time"] and (hi is None or t["event_time"] < hi)
    ]


def _mlp(x: np.ndarray, y: np.ndarray, hidden: int) -> Pipeline:
    with warnings.catch_warnings():  # converged or not, these weights serve the test
        warnings.simplefilter("ignore", ConvergenceWarning)
        return Pipeline(
            [("scale", StandardScaler()), ("mlp", MLPClassifier((hidden,), max_iter=200, random_state=0))]
        ).fit(x, y)


def _fit_and_register(s: Settings, reference: list[dict[str, Any]], now: datetime) -> int:
    """Bootstrap a model with the serving card, score the reference stream with it to get exactly the inputs
    serving builds, fit the real model on them, and register it with its profile as the champion."""
    with quiet_feast():
        stored = [name for _, name in service_features(feature_store(s), "fraud_model_v1")]
    features = (*stored, *REQUEST_FEATURES)
    card = ModelCard(
        model_name=s.model.name, kind="mlp", feature_service="fraud_model_v1", features=features,
        defaults=tuple(0.0 for _ in features), request_features=REQUEST_FEATURES, threshold=0.5,
        data_start=reference[0]["event_time"].isoformat(), data_end=now.isoformat(), seed=0,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(200, len(features))).astype(np.float32)
    y0 = (x0[:, 0] > 0).astype(int)
    bootstrap = _mlp(x0, y0, 4)
    registry = Registry(s)
    with registry.start_run("bootstrap") as run_id:
        first = registry.log_candidate(
            run_id, onnx_bytes=export_onnx(bootstrap, card), card=card, profile={}, report={}, params={}, metrics={}
        )
    transactions = reference
    with OnlineReader(s, "fraud_model_v1") as reader:
        batch = Scorer(load_model(s, first.version), reader).score(
            [score_request(t, now) for t in transactions], int(now.timestamp() * 1000)
        )
    labels = np.array([bool(t["is_fraud"]) for t in transactions])
    model = _mlp(batch.inputs, labels, 16)
    onnx_bytes = export_onnx(model, card)
    scores = model.predict_proba(batch.inputs)[:, 1]
    profile = build_profile(
        {**{f: batch.inputs[:, j] for j, f in enumerate(features)}, "score": scores},
        {f: batch.missing[:, j] for j, f in enumerate(features)},
    )
    with registry.start_run("reference") as run_id:
        info = registry.log_candidate(
            run_id, onnx_bytes=onnx_bytes, card=card, profile=profile, report={}, params={}, metrics={}
        )
    registry.promote(info.version, reason="test")
    return info.version


@pytest.fixture(scope="module")
def stage(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Stage:
    data_dir = tmp_path_factory.mktemp("drift-stream")
    s = settings.model_copy(
        update={
            "data_dir": data_dir,
            "redis": settings.redis.model_copy(update={"url": settings.redis.url.rsplit("/", 1)[0] + "/5"}),
        }
    )
    apply_definitions(s)
    now = datetime.now(tz=UTC).replace(microsecond=0)
    # A fixed start: the generator's daily cycle makes the stream depend on the hour it starts at.
    stream = GeneratorConfig(events=EVENTS, start=datetime(2026, 11, 2, 9, tzinfo=UTC), **POPULATION)
    times = sorted(t["event_time"] for chunk in generate(stream) for t in chunk)
    history_end, live_start = times[HISTORY], times[HISTORY + REFERENCE]
    events = data_dir / "stream.parquet"
    write_parquet(stream, events)
    plans = load_plans(s)
    with OnlineWriter(s) as writer:

        def online(plan: Any, ids: list[str], values: Any, event_ms: Any) -> None:
            writer.write(plan.name, ids, {n: values[:, j] for j, n in enumerate(plan.feature_names)}, event_ms)

        backfill(events, plans, data_dir / "offline", start=stream.start, end=history_end, rules=rules_for(s, plans),
                 online=online)  # fmt: skip
    version = _fit_and_register(s, _part(stream, history_end, live_start), now)
    return Stage(s, stream, live_start, version)


@pytest.fixture
def run(stage: Stage) -> Settings:
    """Settings of one worker run: its own topics and group, one drift window for the whole run."""
    tag = uuid.uuid4().hex[:8]
    topics = stage.settings.topics.model_copy(
        update={
            name: f"{name}-{tag}" for name in ("score_requests", "predictions", "dead_letters", "drift", "transactions")
        }
    )
    for name in (topics.score_requests, topics.transactions):
        create_topic(stage.settings, name, 2)
    for name in (topics.predictions, topics.dead_letters, topics.drift):
        create_topic(stage.settings, name, 1)
    return stage.settings.model_copy(
        update={
            "topics": topics,
            "inference": stage.settings.inference.model_copy(
                update={"group_id": f"drift-{tag}", "reload_interval_s": 60}
            ),
            "drift": stage.settings.drift.model_copy(update={"interval_s": 600}),
        }
    )


def _matched_labels() -> float:
    return REGISTRY.get_sample_value("streamscore_inference_labels_total", {"outcome": "matched"}) or 0.0


def _score_live(s: Settings, live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Start a worker, send each live transaction's score request and then the transaction, return every drift
    report; check that every transaction was matched to its prediction as a delayed label."""
    matched_before = _matched_labels()
    worker = InferenceWorker(s)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        # Let the label feed take its partitions first: it starts at the end of the transactions topic.
        deadline = time.monotonic() + 30
        while not worker.consumer.raw.assignment() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        requests, transactions = Serde("score_request"), Serde("transaction")
        producer = Producer(s.kafka)
        for t in live:
            producer.send(s.topics.score_requests, requests.encode(score_request(t, datetime.now(tz=UTC))),
                          key=t["user_id"])  # fmt: skip
            producer.send(s.topics.transactions, transactions.encode(t), key=t["user_id"])
        producer.flush()
        deadline = time.monotonic() + 90
        while _matched_labels() - matched_before < len(live) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        worker.stop()  # a clean stop reports the open window: the whole stream in one deterministic window
        thread.join(30)
    reports: list[dict[str, Any]] = []
    serde = Serde("drift_report")
    with Consumer(s.kafka, f"drift-reader-{uuid.uuid4().hex}", [s.topics.drift]) as consumer:
        deadline = time.monotonic() + 30
        while sum(r["count"] for r in reports) < len(live) and time.monotonic() < deadline:
            reports.extend(serde.decode(m.value()) for m in consumer.poll_batch(100, 0.5))
    assert not thread.is_alive()
    assert len(live) > 2_000
    assert sum(r["count"] for r in reports) == len(live), "every scored request is in exactly one report"
    assert _matched_labels() - matched_before == len(live), "every label was matched to its prediction"
    return reports


def _flagged(reports: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(f["feature"], f["statistic"]) for r in reports for f in r["features"] if f["drifted"]}


def test_a_stationary_stream_is_not_flagged(stage: Stage, run: Settings) -> None:
    reports = _score_live(run, _part(stage.stream, stage.live_start))
    assert all(r["model_version"] == str(stage.version) for r in reports)
    counted = [r for r in reports if r["count"] >= run.drift.min_count]
    assert counted, "no window was large enough to judge"
    assert _flagged(reports) == set()
    assert not any(r["drifted"] for r in reports)


def test_a_drifting_stream_is_flagged(stage: Stage, run: Settings) -> None:
    drifting = dataclasses.replace(stage.stream, drift_at=stage.live_start)
    reports = _score_live(run, _part(drifting, stage.live_start))
    flagged = _flagged(reports)
    assert any(r["drifted"] for r in reports)
    # The generator's drift moves amounts and the channel mix, and brings merchants with no history.
    assert {"req_channel_ecom", "req_amount_log"} & {feature for feature, _ in flagged}
    assert any(statistic == "missing_rate" and feature.startswith("merchant_") for feature, statistic in flagged)
