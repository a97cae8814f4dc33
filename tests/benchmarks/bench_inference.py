"""The inference worker: score requests already on Kafka to acknowledged predictions, against a naive worker.

Runs against a Kafka + Redis of its own. 10k users and 1k merchants are written with ``OnlineWriter``; the model
is an MLP of the default training shape (32, 16) over ``fraud_model_v1`` plus the request features, registered
twice with the same ONNX bytes: once with its reference profile (drift monitoring on) and once without (off),
so the two runs differ in nothing but the monitor. ``python -m tests.benchmarks inference``.

* **throughput**: ``REQUESTS`` requests are on the topic before a worker starts; the clock runs from the worker's
  first poll until the last batch is committed. The worker is the real :class:`InferenceWorker` (batches from the
  poll, one pipelined Redis read, one ONNX call, every prediction acknowledged before the commit), in a fresh
  consumer group each run, drift on and off alternating. The baseline is what a first version would do: one
  message at a time, Feast's ``get_online_features`` for its entity row, ONNX Runtime on one row, produce, wait
  for the acknowledgement, commit.
* **latency**: requests sent at a steady rate for ``LATENCY_SECONDS``; the prediction's own ``latency.total_ms``
  (request time to scored) gives the end-to-end percentiles, and its phases where the time went.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from services.settings import Settings
from tests.benchmarks.bench_reader import MERCHANTS, USERS, write_entities
from tests.benchmarks.features_common import bench_stack, isolated, say

PARTS = ("throughput", "latency")

REQUESTS = 40_000
NAIVE_REQUESTS = 1_500
ROUNDS = 2  # drift on / off, alternating
RATES = (1_000, 4_000)
LATENCY_SECONDS = 10.0
SERVICE = "fraud_model_v1"


@dataclass
class Run:
    label: str
    requests: int
    seconds: float
    batches: float  # mean requests per batch

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def _register(settings: Settings) -> tuple[int, int]:
    """The same MLP twice: with its reference profile (monitored) and without (not monitored)."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from services.features.request import REQUEST_FEATURES
    from services.models import ModelCard, Registry, build_profile, export_onnx
    from services.store import feature_store, quiet_feast
    from services.training import service_features

    with quiet_feast():
        stored = [name for _, name in service_features(feature_store(settings), SERVICE)]
    features = (*stored, *REQUEST_FEATURES)
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 20.0, size=(20_000, len(features))).astype(np.float32)
    y = (x[:, 0] + x[:, -3] + rng.normal(scale=20, size=len(x)) > 60).astype(int)
    model = Pipeline([("scale", StandardScaler()), ("mlp", MLPClassifier((32, 16), max_iter=30, random_state=0))]).fit(
        x, y
    )
    card = ModelCard(
        model_name=settings.model.name, kind="mlp", feature_service=SERVICE, features=features,
        defaults=tuple(0.0 for _ in features), request_features=REQUEST_FEATURES, threshold=0.5,
        data_start="2026-01-01T00:00:00+00:00", data_end="2026-01-02T00:00:00+00:00", seed=0,
    )  # fmt: skip
    onnx_bytes = export_onnx(model, card)
    profile = build_profile({**{f: x[:, j] for j, f in enumerate(features)}, "score": model.predict_proba(x)[:, 1]})
    registry = Registry(settings)
    versions = []
    for name, prof in (("monitored", profile), ("unmonitored", {})):
        with registry.start_run(name) as run_id:
            info = registry.log_candidate(
                run_id, onnx_bytes=onnx_bytes, card=card, profile=prof, report={}, params={}, metrics={}
            )
        versions.append(info.version)
    return versions[0], versions[1]


def _requests(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    users, merchants = rng.integers(0, USERS, n), rng.integers(0, MERCHANTS, n)
    amounts = rng.gamma(2.0, 30.0, n)
    channels = np.array(["POS", "ECOM", "ATM", "MOTO"])[rng.integers(0, 4, n)]
    now = datetime.now(tz=UTC)
    return [
        {
            "request_id": f"r-{seed}-{i}",
            "user_id": f"user-{users[i]}",
            "merchant_id": f"merchant-{merchants[i]}",
            "amount": float(amounts[i]),
            "currency": "EUR",
            "country": "DE",
            "channel": str(channels[i]),
            "request_time": now,
            "context": None,
        }
        for i in range(n)
    ]


def _send(settings: Settings, requests: list[dict[str, Any]]) -> None:
    from services.kafka import Producer
    from services.serde import Serde

    serde = Serde("score_request")
    producer = Producer(settings.kafka, client_suffix="bench")
    for r in requests:
        producer.send(settings.topics.score_requests, serde.encode(r), key=r["user_id"])
    producer.flush()


def _worker_run(settings: Settings, version: int, label: str, total: int) -> Run:
    """One worker in a new group over the whole topic; timed from its first poll to its last commit."""
    from services.inference import InferenceWorker
    from services.models import Registry

    Registry(settings).promote(version, reason="bench")
    s = settings.model_copy(
        update={"inference": settings.inference.model_copy(update={"group_id": f"bench-{uuid.uuid4().hex[:8]}"})}
    )
    worker = InferenceWorker(s)
    batches = 0
    publish = worker._publish

    def counted(messages: Any) -> None:
        nonlocal batches
        publish(messages)
        batches += bool(messages)

    worker._publish = counted  # type: ignore[method-assign]
    thread = threading.Thread(target=worker.run, daemon=True)
    started = time.perf_counter()
    thread.start()
    while worker.scored < total:
        if not thread.is_alive():
            raise RuntimeError(f"worker stopped after {worker.scored} of {total} requests")
        time.sleep(0.002)
    seconds = time.perf_counter() - started
    worker.stop()
    thread.join(30)
    return Run(label, total, seconds, total / max(batches, 1))


def _naive_run(settings: Settings, version: int, total: int) -> Run:
    """One request at a time: Feast's online read, one ONNX row, produce, wait for the ack, commit."""
    from services.features.request import request_features
    from services.kafka import Consumer, Producer
    from services.models import load_model
    from services.serde import Serde
    from services.store import feature_store, quiet_feast

    session = load_model(settings, version)
    store = feature_store(settings)
    with quiet_feast():
        service = store.get_feature_service(SERVICE)
    requests, predictions = Serde("score_request"), Serde("prediction")
    producer = Producer(settings.kafka, client_suffix="naive")
    card = session.card
    defaults = np.asarray(card.defaults, dtype=np.float64)
    done = 0
    started = time.perf_counter()
    with Consumer(settings.kafka, f"naive-{uuid.uuid4().hex[:8]}", [settings.topics.score_requests]) as consumer:
        while done < total:
            for msg in consumer.poll_batch(1, 1.0):
                r = requests.decode(msg.value())
                with quiet_feast():
                    online = store.get_online_features(
                        features=service, entity_rows=[{"user_id": r["user_id"], "merchant_id": r["merchant_id"]}]
                    ).to_dict()
                stored = {k: np.array([np.nan if v[0] is None else v[0]]) for k, v in online.items()}
                columns = {**stored, **request_features(np.array([r["amount"]]), np.array([r["channel"]]), stored)}
                raw = np.array([[columns[f][0] for f in card.features]], dtype=np.float64)
                score = float(session.predict(np.where(np.isnan(raw), defaults, raw))[0])
                record = {
                    "request_id": r["request_id"], "user_id": r["user_id"], "score": score, "decision": score >= 0.5,
                    "threshold": 0.5, "model_name": card.model_name, "model_version": session.version,
                    "feature_freshness_ms": None, "missing_features": [],
                    "latency": {"queue_ms": 0.0, "features_ms": 0.0, "inference_ms": 0.0, "total_ms": 0.0},
                    "request_time": r["request_time"], "scored_at": int(time.time() * 1000),
                }  # fmt: skip
                producer.send(settings.topics.predictions, predictions.encode(record), key=r["request_id"])
                producer.flush()
                consumer.commit([msg])
                done += 1
    return Run("naive: one message at a time, Feast read, ack and commit each", total, time.perf_counter() - started, 1)


def throughput(settings: Settings, monitored: int, unmonitored: int) -> list[Run]:
    say(f"inference: sending {REQUESTS:,} requests")
    _send(settings, _requests(REQUESTS, seed=1))
    runs: list[Run] = []
    for i in range(ROUNDS):
        for version, label in (
            (monitored, "worker, drift monitoring on"),
            (unmonitored, "worker, drift monitoring off"),
        ):
            say(f"inference: round {i + 1}, {label}")
            runs.append(_worker_run(settings, version, label, REQUESTS))
    say(f"inference: naive worker over {NAIVE_REQUESTS:,} requests")
    runs.append(_naive_run(settings, monitored, NAIVE_REQUESTS))
    return runs


def throughput_markdown(runs: list[Run]) -> str:
    best: dict[str, Run] = {}
    for r in runs:
        if r.label not in best or r.rate > best[r.label].rate:
            best[r.label] = r
    naive = next(r for r in best.values() if r.label.startswith("naive"))
    on = best["worker, drift monitoring on"]
    off = best["worker, drift monitoring off"]
    lines = [
        f"| {r.label} | {r.requests:,} | {r.rate:,.0f} | {r.batches:.0f} | {r.rate / naive.rate:.0f}x |"
        for r in best.values()
    ]
    return "\n".join(
        [
            f"### Inference worker throughput (requests/s, one worker process, {REQUESTS:,} requests on 4 partitions)",
            "",
            "| worker | requests | requests/s | mean batch | vs naive |",
            "| --- | ---: | ---: | ---: | ---: |",
            *lines,
            "",
            f"Best of {ROUNDS} runs each, on and off alternating, each in a new consumer group from the start of the "
            "same topic; timed from the worker's first poll to its last commit (every prediction acknowledged by "
            "the broker). Same ONNX bytes in both runs; `max_batch` 256, `max_delay_ms` 5, one ONNX Runtime thread. "
            f"Drift monitoring costs **{(1 - on.rate / off.rate) * 100:.1f}%** of throughput "
            f"(on/off = {on.rate / off.rate:.3f}).",
            "",
        ]
    )


def latency(settings: Settings, monitored: int) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Steady-rate runs of the monitored model; phases from the predictions' own latency records."""
    from services.inference import InferenceWorker
    from services.kafka import Consumer, Producer, ensure_topics
    from services.models import Registry
    from services.serde import Serde

    Registry(settings).promote(monitored, reason="bench")
    out = []
    for rate in RATES:
        tag = uuid.uuid4().hex[:8]
        topics = settings.topics.model_copy(
            update={"score_requests": f"lat-req-{tag}", "predictions": f"lat-pred-{tag}"}
        )
        s = settings.model_copy(
            update={
                "topics": topics,
                "inference": settings.inference.model_copy(update={"group_id": f"lat-{tag}"}),
            }
        )
        ensure_topics(s)
        worker = InferenceWorker(s)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        time.sleep(2.0)  # group joined, partitions assigned
        n = int(rate * LATENCY_SECONDS)
        say(f"inference: {n:,} requests at {rate:,}/s")
        requests = _requests(n, seed=rate)
        serde = Serde("score_request")
        producer = Producer(s.kafka, client_suffix="bench", **{"linger.ms": 1})
        t0 = time.perf_counter()
        for i, r in enumerate(requests):
            due = t0 + i / rate
            while (ahead := due - time.perf_counter()) > 0.001:
                time.sleep(ahead)
            r["request_time"] = datetime.now(tz=UTC)
            producer.send(topics.score_requests, serde.encode(r), key=r["user_id"])
            producer.poll(0)
        producer.flush()
        phases: dict[str, list[float]] = {"queue_ms": [], "features_ms": [], "inference_ms": [], "total_ms": []}
        decoder = Serde("prediction")
        with Consumer(s.kafka, f"lat-read-{tag}", [topics.predictions]) as consumer:
            deadline = time.monotonic() + 60
            while len(phases["total_ms"]) < n and time.monotonic() < deadline:
                for msg in consumer.poll_batch(1000, 0.5):
                    record = decoder.decode(msg.value())
                    for k in phases:
                        phases[k].append(record["latency"][k])
        worker.stop()
        thread.join(30)
        out.append((rate, {k: np.array(v) for k, v in phases.items()}))
    return out


def latency_markdown(results: list[tuple[int, dict[str, np.ndarray]]]) -> str:
    rows = []
    for rate, phases in results:
        total = phases["total_ms"]
        q = np.quantile(total, [0.5, 0.95, 0.99])
        parts = ", ".join(f"{k[:-3]} {np.median(v):.2f}" for k, v in phases.items() if k != "total_ms")
        rows.append(f"| {rate:,} | {len(total):,} | {q[0]:.1f} | {q[1]:.1f} | {q[2]:.1f} | {parts} |")
    return "\n".join(
        [
            "### Inference end-to-end latency at a steady rate (ms, request time to scored, one worker)",
            "",
            "| requests/s | predictions | p50 | p95 | p99 | medians by phase (ms) |",
            "| ---: | ---: | ---: | ---: | ---: | --- |",
            *rows,
            "",
            f"Each rate for {LATENCY_SECONDS:.0f} s from one producer in the benchmark process (the same 2 cores run "
            "the broker, Redis, the worker and the producer). `total` runs from the request's `request_time` (set "
            "when it is sent) to `scored_at`, before the prediction is published; `queue` includes the producer's "
            "linger and the broker round trip; the batch wait (`max_delay_ms` 5) is in `queue` too.",
            "",
        ]
    )


def run(parts: Iterable[str] | None = None) -> str:
    selected = set(parts or PARTS)
    unknown = selected - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown inference benchmark part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    from services.kafka import ensure_topics
    from services.store import apply_definitions

    with bench_stack() as (base, tmp):
        settings = isolated(base, tmp, "inference", redis_db=2)
        settings = settings.model_copy(
            update={
                "topics": settings.topics.model_copy(
                    update={"score_requests": "bench-requests", "predictions": "bench-predictions"}
                ),
                "inference": settings.inference.model_copy(update={"labels": False, "drift_interval_s": 5.0}),
            }
        )
        ensure_topics(settings)
        apply_definitions(settings)
        say("inference: writing features")
        write_entities(settings, np.random.default_rng(11))
        monitored, unmonitored = _register(settings)
        out = []
        if "throughput" in selected:
            out.append(throughput_markdown(throughput(settings, monitored, unmonitored)))
        if "latency" in selected:
            out.append(latency_markdown(latency(settings, monitored)))
        return "\n".join(out)


if __name__ == "__main__":
    print(run())
