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
* **caller**: what a caller sees (issue 16): a separate client process (``latency_client.py``) sends at a
  steady rate and reads the predictions on its own consumer thread, request handed to the producer ->
  prediction read; the same client's bare Kafka round trip (send to a topic, read it back) at the same rate
  is the floor, measured in the same run; the worker runs with ``max_delay_ms`` 0 (the default: score what
  has arrived) and 5 (wait 5 ms after a batch's first request, as before), each in a process of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from streamscore.settings import Settings
from tests.benchmarks.bench_reader import MERCHANTS, USERS, write_entities
from tests.benchmarks.features_common import bench_stack, isolated, say, start_worker

PARTS = ("throughput", "latency", "caller", "fetch")

REQUESTS = 40_000
NAIVE_REQUESTS = 1_500
WARMUP_RUNS = 2  # the broker's JIT and caches: each of the first runs is faster than the one before
ORDER = "ABBAABBA"  # A = drift monitoring on, B = off: balanced, so a remaining trend favours neither
RATES = (1_000, 2_000, 4_000)
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
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from streamscore.features.request import REQUEST_FEATURES
    from streamscore.models import ModelCard, Registry, build_profile, export_onnx
    from streamscore.store import feature_store, quiet_feast
    from streamscore.training import service_features

    with quiet_feast():
        stored = [name for _, name in service_features(feature_store(settings), SERVICE)]
    features = (*stored, *REQUEST_FEATURES)
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 20.0, size=(20_000, len(features))).astype(np.float32)
    y = (x[:, 0] + x[:, -3] + rng.normal(scale=20, size=len(x)) > 60).astype(int)
    with warnings.catch_warnings():  # 30 epochs give realistic weights; convergence is not the point
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier((32, 16), max_iter=30, random_state=0)
        model = Pipeline([("scale", StandardScaler()), ("mlp", mlp)]).fit(x, y)
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
    from streamscore.kafka import Producer
    from streamscore.serde import Serde

    serde = Serde("score_request")
    producer = Producer(settings.kafka, client_suffix="bench")
    for r in requests:
        producer.send(settings.topics.score_requests, serde.encode(r), key=r["user_id"])
    producer.flush()


def _worker_run(settings: Settings, version: int, label: str, total: int) -> Run:
    """One worker in a new group over the whole topic; timed from its first poll to its last commit."""
    from streamscore.inference import InferenceWorker
    from streamscore.models import Registry

    Registry(settings).promote(version, reason="bench")
    s = settings.model_copy(
        update={"inference": settings.inference.model_copy(update={"group_id": f"bench-{uuid.uuid4().hex[:8]}"})}
    )
    worker = InferenceWorker(s)
    count0, sum0 = _batch_sizes()
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
    count1, sum1 = _batch_sizes()
    return Run(label, total, seconds, (sum1 - sum0) / max(count1 - count0, 1))


def _batch_sizes() -> tuple[float, float]:
    """(batches, requests) so far, from the worker's own batch-size histogram."""
    from prometheus_client import REGISTRY

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    return value("streamscore_inference_batch_size_count"), value("streamscore_inference_batch_size_sum")


def _naive_run(settings: Settings, version: int, total: int) -> Run:
    """One request at a time: Feast's online read, one ONNX row, produce, wait for the ack, commit."""
    from streamscore.features.request import request_features
    from streamscore.kafka import Consumer, Producer
    from streamscore.models import load_model
    from streamscore.serde import Serde
    from streamscore.store import feature_store, quiet_feast

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
    on, off = (monitored, "worker, drift monitoring on"), (unmonitored, "worker, drift monitoring off")
    for i in range(WARMUP_RUNS):
        say(f"inference: warm-up run {i + 1}")
        _worker_run(settings, *(on if i % 2 else off), REQUESTS)
    runs: list[Run] = []
    for i, which in enumerate(ORDER):
        version, label = on if which == "A" else off
        say(f"inference: run {i + 1} of {len(ORDER)}, {label}")
        runs.append(_worker_run(settings, version, label, REQUESTS))
    say(f"inference: naive worker over {NAIVE_REQUESTS:,} requests")
    runs.append(_naive_run(settings, monitored, NAIVE_REQUESTS))
    return runs


def throughput_markdown(runs: list[Run]) -> str:
    labels = list(dict.fromkeys(r.label for r in runs))
    rates = {label: np.array([r.rate for r in runs if r.label == label]) for label in labels}
    batches = {label: np.mean([r.batches for r in runs if r.label == label]) for label in labels}
    counts = {label: next(r.requests for r in runs if r.label == label) for label in labels}
    naive = next(float(rates[label].mean()) for label in labels if label.startswith("naive"))
    on, off = rates["worker, drift monitoring on"].mean(), rates["worker, drift monitoring off"].mean()
    lines = [
        f"| {label} | {counts[label]:,} | {rates[label].mean():,.0f} | {rates[label].min():,.0f} to "
        f"{rates[label].max():,.0f} | {batches[label]:.0f} | {rates[label].mean() / naive:.0f}x |"
        for label in labels
    ]
    return "\n".join(
        [
            f"### Inference worker throughput (requests/s, one worker process, {REQUESTS:,} requests on 4 partitions)",
            "",
            "| worker | requests | requests/s (mean) | range | mean batch | vs naive |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *lines,
            "",
            f"After {WARMUP_RUNS} warm-up runs, {len(ORDER)} runs in the order {ORDER} (A: drift monitoring on, B: "
            "off), each in a new consumer group from the start of the same topic, timed from the worker's first "
            "poll to its last commit (every prediction acknowledged by the broker). Same ONNX bytes in both; "
            "`max_batch` 256, `max_delay_ms` 5, one ONNX Runtime thread; the broker, Redis and the worker share "
            f"the 2 cores. Drift monitoring costs **{(1 - on / off) * 100:.1f}%** of throughput (on/off = "
            f"{on / off:.3f}); `DriftMonitor.observe` alone takes about 0.15 µs per request (numba, batches of 256).",
            "",
        ]
    )


def latency(settings: Settings, monitored: int) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Steady-rate runs of the monitored model against one worker process; phases from the predictions' own
    latency records. A first run at the lowest rate warms the broker's JIT and the worker up and is dropped."""
    from streamscore.kafka import Consumer, Producer, ensure_topics
    from streamscore.models import Registry
    from streamscore.serde import Serde

    Registry(settings).promote(monitored, reason="bench")
    tag = uuid.uuid4().hex[:8]
    topics = settings.topics.model_copy(update={"score_requests": f"lat-req-{tag}", "predictions": f"lat-pred-{tag}"})
    s = settings.model_copy(
        update={"topics": topics, "inference": settings.inference.model_copy(update={"group_id": f"lat-{tag}"})}
    )
    ensure_topics(s)
    worker = start_worker(s, "latency-worker")
    out = []
    try:
        serde, decoder = Serde("score_request"), Serde("prediction")
        producer = Producer(s.kafka, client_suffix="bench", **{"linger.ms": 1})
        for run, rate in enumerate((RATES[0], *RATES)):
            n = int(rate * LATENCY_SECONDS)
            say(f"inference: {n:,} requests at {rate:,}/s{'' if run else ' (warm-up)'}")
            requests = _requests(n, seed=run)
            t0 = time.perf_counter()
            for i, r in enumerate(requests):
                while (ahead := t0 + i / rate - time.perf_counter()) > 0.001:
                    time.sleep(ahead)
                r["request_time"] = datetime.now(tz=UTC)
                producer.send(topics.score_requests, serde.encode(r), key=r["user_id"])
                producer.raw.poll(0)
            producer.flush()
            prefix = f"r-{run}-"
            phases: dict[str, list[float]] = {"queue_ms": [], "features_ms": [], "inference_ms": [], "total_ms": []}
            with Consumer(s.kafka, f"lat-read-{tag}-{run}", [topics.predictions]) as consumer:
                deadline = time.monotonic() + 60
                while len(phases["total_ms"]) < n and time.monotonic() < deadline:
                    for msg in consumer.poll_batch(1000, 0.5):
                        record = decoder.decode(msg.value())
                        if record["request_id"].startswith(prefix):
                            for k in phases:
                                phases[k].append(record["latency"][k])
            if run:
                out.append((rate, {k: np.array(v) for k, v in phases.items()}))
    finally:
        worker.terminate()
        worker.wait(60)
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
            f"After a warm-up run, each rate for {LATENCY_SECONDS:.0f} s from one producer in the benchmark process, "
            "against one worker in a process of its own "
            "(`streamscore inference run`; the same 2 cores run the broker, Redis, the worker and the producer). "
            "`total` runs from the request's `request_time` (set when it is sent) to `scored_at`, before the "
            "prediction is published; `queue` includes the producer's "
            "linger and the broker round trip; the batch wait (`max_delay_ms` 5) is in `queue` too.",
            "",
        ]
    )


CALLER_POLICIES = (0, 5)  # max_delay_ms of the worker


def _caller_run(
    s: Settings, mode: str, rate: int, seed: int, consumer: dict[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """One client process at ``rate`` for ``LATENCY_SECONDS``; its per-request timings."""
    path = s.data_dir / f"caller-{mode}-{rate}-{seed}"
    path.with_suffix(".json").write_text(s.model_dump_json())
    cmd = [sys.executable, "-m", "tests.benchmarks.latency_client", str(path.with_suffix(".json")),
           str(path.with_suffix(".npz")), "--mode", mode, "--rate", str(rate), "--seconds", str(LATENCY_SECONDS),
           "--seed", str(seed), "--consumer", json.dumps(consumer or {})]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=LATENCY_SECONDS + 180)
    with np.load(path.with_suffix(".npz")) as data:
        return {k: data[k] for k in data.files}


def caller(settings: Settings, monitored: int) -> list[tuple[int, str, dict[str, np.ndarray]]]:
    """(rate, "bare" or "max_delay_ms=N", timings) of every run; a warm-up run first, dropped."""
    from streamscore.kafka import ensure_topics
    from streamscore.models import Registry

    Registry(settings).promote(monitored, reason="bench")
    tag = uuid.uuid4().hex[:8]
    bare = settings.topics.model_copy(update={"score_requests": f"bare-{tag}"})
    ensure_topics(settings.model_copy(update={"topics": bare}))
    out: list[tuple[int, str, dict[str, np.ndarray]]] = []
    for policy in CALLER_POLICIES:
        topics = settings.topics.model_copy(
            update={"score_requests": f"call-req-{tag}-{policy}", "predictions": f"call-pred-{tag}-{policy}"}
        )
        inference = settings.inference.model_copy(update={"group_id": f"call-{tag}-{policy}", "max_delay_ms": policy})
        s = settings.model_copy(update={"topics": topics, "inference": inference})
        ensure_topics(s)
        worker = start_worker(s, f"caller-worker-{policy}")
        try:
            say(f"inference: caller warm-up (max_delay_ms {policy})")
            _caller_run(s, "pipeline", RATES[0], seed=100 + policy)
            for rate in RATES:
                if policy == CALLER_POLICIES[0]:
                    say(f"inference: caller, bare Kafka at {rate:,}/s")
                    out.append((rate, "bare", _caller_run(settings.model_copy(update={"topics": bare}), "bare", rate,
                                                          seed=rate)))  # fmt: skip
                say(f"inference: caller at {rate:,}/s, max_delay_ms {policy}")
                out.append((rate, f"max_delay_ms={policy}", _caller_run(s, "pipeline", rate, seed=rate + policy)))
        finally:
            worker.terminate()
            worker.wait(60)
    return out


def caller_markdown(results: list[tuple[int, str, dict[str, np.ndarray]]]) -> str:
    def seen(d: dict[str, np.ndarray]) -> np.ndarray:
        return d["got"] - d["sent"]

    rows, hops, held = [], [], []
    for rate in RATES:
        runs = {label: d for r, label, d in results if r == rate}
        base = seen(runs["bare"])
        b50, b99 = np.nanquantile(base, [0.5, 0.99])
        cells = [f"{rate:,}", f"{b50:.1f} / {b99:.1f}"]
        for policy in CALLER_POLICIES:
            d = runs[f"max_delay_ms={policy}"]
            total = seen(d)
            lost = int(np.isnan(total).sum())
            p50, p99 = np.nanquantile(total, [0.5, 0.99])
            ok = "yes" if p50 <= b50 + 5 and p99 <= 1.5 * b99 else "no"
            cells.append(f"{p50:.1f} / {p99:.1f}{f' ({lost} unanswered)' if lost else ''} | {ok}")
            if policy == 0:
                if p99 <= 100:
                    held.append(rate)
                to_worker = d["queue_ms"]
                hops.append(
                    f"| {rate:,} | {np.nanmedian(to_worker):.1f} | {np.nanmedian(d['features_ms']):.1f} | "
                    f"{np.nanmedian(d['inference_ms']):.1f} | {np.nanmedian(d['produced'] - d['scored']):.1f} | "
                    f"{np.nanmedian(d['got'] - d['produced']):.1f} | {np.nanmedian(total):.1f} |"
                )
        rows.append("| " + " | ".join(cells) + " |")
    heads = " | ".join(f"max_delay_ms {p}: p50 / p99 | target met?" for p in CALLER_POLICIES)
    return "\n".join(
        [
            "### Latency a caller sees (ms, request handed to the producer -> prediction read, one worker)",
            "",
            f"| requests/s | bare Kafka round trip: p50 / p99 | {heads} |",
            "| ---: | --- |" + " --- | --- |" * len(CALLER_POLICIES),
            *rows,
            "",
            "Target: p50 <= bare p50 + 5 ms and p99 <= 1.5x bare p99, the bare round trip measured by the same "
            f"client at the same rate in the same run. Highest rate tested that one worker holds with p99 <= 100 ms"
            f" (max_delay_ms 0): {f'{max(held):,}/s' if held else 'none of those tested'}.",
            "",
            "Where the time goes with max_delay_ms 0 (medians, ms): *to the worker* is the request's send to the "
            "worker picking its batch (client produce, broker, the worker's fetch and poll); *publish* is scored to "
            "the prediction's producer timestamp; *to the caller* is from there to the client reading it (the "
            "worker's flush and acknowledgement, broker, the client's fetch).",
            "",
            "| requests/s | to the worker | features | ONNX | publish | to the caller | total |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *hops,
            "",
            f"Each run {LATENCY_SECONDS:.0f} s from a client process of its own (`tests/benchmarks/latency_client.py`: "
            "producer `linger.ms` 0, consumer `fetch.wait.max.ms` 10 on its own thread, partitions assigned at their "
            "end before the first send); the worker (`streamscore inference run`) in another; the broker, Redis, "
            "the worker and the client share the 2 cores.",
            "",
        ]
    )


# (label, the client's consumer settings, the worker's producer linger.ms): one setting changed at a time from
# the documented caller settings (fetch.wait.max.ms 10, the worker's linger.ms 1).
FETCH_SWEEP: tuple[tuple[str, dict[str, Any], int], ...] = (
    ("documented: client fetch.wait.max.ms 10, worker linger.ms 1", {}, 1),
    ("client fetch.wait.max.ms 500 (librdkafka's default)", {"fetch.wait.max.ms": 500}, 1),
    ("client fetch.wait.max.ms 100", {"fetch.wait.max.ms": 100}, 1),
    ("client fetch.min.bytes 10000, fetch.wait.max.ms 100", {"fetch.min.bytes": 10_000, "fetch.wait.max.ms": 100}, 1),
    ("worker linger.ms 0", {}, 0),
    ("worker linger.ms 20", {}, 20),
)
FETCH_RATE = 1_000


def fetch_sweep(settings: Settings, monitored: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Caller latency at ``FETCH_RATE`` under each client/worker setting of ``FETCH_SWEEP`` (max_delay_ms 0)."""
    from streamscore.kafka import ensure_topics
    from streamscore.models import Registry
    from streamscore.settings import child_env

    Registry(settings).promote(monitored, reason="bench")
    out = []
    for i, (label, consumer, linger) in enumerate(FETCH_SWEEP):
        tag = uuid.uuid4().hex[:8]
        names = {"score_requests": f"fetch-req-{tag}", "predictions": f"fetch-pred-{tag}"}
        topics = settings.topics.model_copy(update=names)
        inference = settings.inference.model_copy(update={"group_id": f"fetch-{tag}", "max_delay_ms": 0})
        s = settings.model_copy(update={"topics": topics, "inference": inference})
        ensure_topics(s)
        env = child_env(s)
        env["STREAMSCORE_KAFKA__EXTRA"] = json.dumps({**s.kafka.extra, "linger.ms": str(linger)})
        worker = start_worker(s, f"fetch-worker-{i}", env=env)
        try:
            say(f"inference: fetch sweep: {label}")
            _caller_run(s, "pipeline", FETCH_RATE, seed=200 + i, consumer=consumer)  # warm-up, dropped
            out.append((label, _caller_run(s, "pipeline", FETCH_RATE, seed=300 + i, consumer=consumer)))
        finally:
            worker.terminate()
            worker.wait(60)
    return out


def fetch_markdown(results: list[tuple[str, dict[str, np.ndarray]]]) -> str:
    rows = []
    for label, d in results:
        total = d["got"] - d["sent"]
        p50, p99 = np.nanquantile(total, [0.5, 0.99])
        rows.append(
            f"| {label} | {p50:.1f} | {p99:.1f} | {np.nanmedian(d['queue_ms']):.1f} | "
            f"{np.nanmedian(d['produced'] - d['scored']):.1f} | {np.nanmedian(d['got'] - d['produced']):.1f} |"
        )
    return "\n".join(
        [
            f"### Fetch and linger settings (ms, caller-seen latency at {FETCH_RATE:,} requests/s, max_delay_ms 0)",
            "",
            "One setting changed at a time from the documented ones; each row a worker and client of its own, a "
            f"warm-up run dropped, then {LATENCY_SECONDS:.0f} s measured. Hops are medians as in the table above.",
            "",
            "| setting | p50 | p99 | to the worker | publish | to the caller |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    )


def run(parts: Iterable[str] | None = None) -> str:
    selected = set(parts or PARTS)
    unknown = selected - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown inference benchmark part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    from streamscore.kafka import ensure_topics
    from streamscore.store import apply_definitions

    with bench_stack() as (base, tmp):
        settings = isolated(base, tmp, "inference", redis_db=2)
        settings = settings.model_copy(
            update={
                "topics": settings.topics.model_copy(
                    update={"score_requests": "bench-requests", "predictions": "bench-predictions"}
                ),
                "drift": settings.drift.model_copy(update={"labels": False, "interval_s": 5.0}),
                # The throughput and latency parts keep the 5 ms batch wait their earlier figures were taken with;
                # the caller part sets its own.
                "inference": settings.inference.model_copy(update={"max_delay_ms": 5}),
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
        if "caller" in selected:
            out.append(caller_markdown(caller(settings, monitored)))
        if "fetch" in selected:
            out.append(fetch_markdown(fetch_sweep(settings, monitored)))
        return "\n".join(out)


if __name__ == "__main__":
    print(run())
