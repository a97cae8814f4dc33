"""The inference worker against the real broker, Redis, Feast and an MLflow-registered ONNX model."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import KafkaException
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

from streamscore.inference import InferenceWorker
from streamscore.kafka import Consumer, Producer, group_lag, read_dead_letter
from streamscore.models import Registry, load_model
from streamscore.serde import Serde
from streamscore.settings import Settings, child_env
from streamscore.store import OnlineWriter, feature_store, quiet_feast
from streamscore.training import service_features
from tests.inference.helpers import KNOWN_USERS, MERCHANTS, NOW_MS, register_model, served_settings
from tests.kafka.helpers import create_topic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return served_settings(settings, tmp_path_factory.mktemp("inference"))


def _requests(n: int, *, unknown_every: int = 5) -> list[dict[str, Any]]:
    rng = np.random.default_rng(n)
    return [
        {
            "request_id": f"r-{uuid.uuid4().hex}",
            "user_id": f"u-new-{i}" if i % unknown_every == 0 else KNOWN_USERS[i % len(KNOWN_USERS)],
            "merchant_id": MERCHANTS[i % len(MERCHANTS)],
            "amount": float(rng.gamma(2.0, 30.0)),
            "currency": "EUR",
            "country": "DE",
            "channel": ["POS", "ECOM", "ATM", "MOTO"][i % 4],
            "request_time": datetime.now(tz=UTC),
        }
        for i in range(n)
    ]


def _send(s: Settings, requests: list[dict[str, Any]], extra: list[tuple[bytes | None, bytes]] = ()) -> None:
    serde = Serde("score_request")
    producer = Producer(s.kafka)
    for r in requests:
        trace = f"00-{r['request_id'][2:34]}-0000000000000001-01".encode()
        producer.send(s.topics.score_requests, serde.encode(r), key=r["user_id"], headers=[("traceparent", trace)])
    for key, value in extra:
        producer.send(s.topics.score_requests, value, key=key)
    producer.flush()


def _predictions(s: Settings, wanted: set[str], *, timeout_s: float = 60.0, committed: bool = False) -> list[Any]:
    """Every prediction message until all ``wanted`` ids have one (fails the test on timeout)."""
    serde = Serde("prediction")
    seen: list[Any] = []
    ids: set[str] = set()
    overrides = {"isolation.level": "read_committed"} if committed else {}
    with Consumer(s.kafka, f"reader-{uuid.uuid4().hex}", [s.topics.predictions], **overrides) as consumer:
        deadline = time.monotonic() + timeout_s
        while not wanted <= ids and time.monotonic() < deadline:
            for msg in consumer.poll_batch(500, 0.3):
                record = serde.decode(msg.value())
                seen.append((record, msg))
                ids.add(record["request_id"])
        # Keep reading briefly: duplicates, if any, must be counted.
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            for msg in consumer.poll_batch(500, 0.3):
                seen.append((serde.decode(msg.value()), msg))
    assert wanted <= ids, f"{len(wanted - ids)} of {len(wanted)} requests got no prediction"
    return seen


@pytest.fixture
def worker(served: Settings) -> Iterator[InferenceWorker]:
    w = InferenceWorker(served)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(30)
    assert not thread.is_alive()


def test_every_request_is_scored_like_feast_would_feed_the_model(served: Settings, worker: InferenceWorker) -> None:
    requests = _requests(300)
    garbage = [(b"k1", b"\x00\x01not avro"), (b"k2", b"")]
    negative = dict(_requests(1)[0], amount=-5.0)
    _send(served, requests, garbage)
    _send(served, [negative])
    seen = _predictions(served, {r["request_id"] for r in requests})
    by_id = {record["request_id"]: (record, msg) for record, msg in seen}
    assert negative["request_id"] not in by_id

    session = load_model(served)
    store = feature_store(served)
    with quiet_feast():
        service = store.get_feature_service("fraud_model_v1")
        online = store.get_online_features(
            features=service, entity_rows=[{"user_id": r["user_id"], "merchant_id": r["merchant_id"]} for r in requests]
        ).to_dict()
    from streamscore.features.request import request_features

    stored = {k: np.array([np.nan if v is None else v for v in vals], dtype=np.float64) for k, vals in online.items()
              if k not in ("user_id", "merchant_id")}  # fmt: skip
    extra = request_features(
        np.array([r["amount"] for r in requests]), np.array([r["channel"] for r in requests]), stored
    )
    columns = {**stored, **extra}
    raw = np.column_stack([columns[f] for f in session.card.features])
    expected = session.predict(np.where(np.isnan(raw), np.asarray(session.card.defaults), raw).astype(np.float32))
    for i, r in enumerate(requests):
        record, msg = by_id[r["request_id"]]
        assert record["score"] == pytest.approx(float(expected[i]), abs=1e-6)
        assert record["decision"] == (record["score"] >= 0.5)
        assert record["model_version"] == "1"
        assert msg.key() == r["request_id"].encode()
        assert dict(msg.headers())["traceparent"].decode().startswith("00-")
        unknown = r["user_id"].startswith("u-new-")
        assert bool(record["missing_features"]) == unknown  # unknown entity: scored with defaults, flagged
        assert set(record["missing_features"]) >= ({"user_amount_count_5m"} if unknown else set())
        assert record["feature_freshness_ms"] >= 60_000  # the merchant features were written a minute ago
        latency = record["latency"]
        assert latency["total_ms"] >= latency["queue_ms"] >= 0

    dead = []
    with Consumer(served.kafka, f"dlq-{uuid.uuid4().hex}", [served.topics.dead_letters]) as consumer:
        deadline = time.monotonic() + 20
        while len(dead) < 3 and time.monotonic() < deadline:
            dead.extend(read_dead_letter(m) for m in consumer.poll_batch(100, 0.3))
    # Confluent framing without a registry, an empty message, a negative amount: each with its reason.
    assert sorted(d.reason for d in dead) == ["amount-negative", "truncated", "unknown-schema"]
    assert {d.stage for d in dead} == {"inference"}


def test_a_request_that_cannot_be_scored_is_dead_lettered_and_the_rest_are_scored(
    served: Settings, worker: InferenceWorker
) -> None:
    """A stored value that is not a number fails every batch it is in; from the third failure in a row the
    worker scores the batch request by request, dead-letters the poisoned request and publishes the rest."""
    from feast.protos.feast.types.Value_pb2 import Value

    from streamscore.store.layout import redis_keys

    poisoned = KNOWN_USERS[3]
    key = redis_keys("user_id", [poisoned], worker.reader.project)[0]
    client = worker.reader.redis
    fields = [f for f in client.hkeys(key) if not f.startswith(b"_ts:")]
    saved = client.hgetall(key)
    client.hset(key, mapping={f: Value(string_val="not a number").SerializeToString() for f in fields})
    dead_before = _count_dead_letters(served, "scoring-failed")
    try:
        requests = [dict(r, user_id=KNOWN_USERS[i % 6]) for i, r in enumerate(_requests(60))]
        _send(served, requests)
        wanted = {r["request_id"] for r in requests if r["user_id"] != poisoned}
        seen = _predictions(served, wanted)
    finally:
        client.hset(key, mapping=saved)
    assert not {r["request_id"] for r in requests if r["user_id"] == poisoned} & {rec["request_id"] for rec, _ in seen}
    deadline = time.monotonic() + 20
    while _count_dead_letters(served, "scoring-failed") - dead_before < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _count_dead_letters(served, "scoring-failed") - dead_before == 10  # every 6th of 60 requests


def _dead_letter_messages(s: Settings, marks: list[bytes], timeout_s: float = 30) -> list[Any]:
    """The dead letters whose original key or value holds one of ``marks`` (other tests share the topic)."""
    out: list[Any] = []
    with Consumer(s.kafka, f"dlq-{uuid.uuid4().hex}", [s.topics.dead_letters]) as consumer:
        deadline = time.monotonic() + timeout_s
        while len(out) < len(marks) and time.monotonic() < deadline:
            for m in consumer.poll_batch(100, 0.3):
                if any(mark in (m.key() or b"") + (m.value() or b"") for mark in marks):
                    out.append(m)
    return out


def test_no_input_wedges_the_worker_or_is_published_as_a_verdict(served: Settings, worker: InferenceWorker) -> None:
    """An oversized non-Avro message (its dead letter would exceed the broker's limit with the error headers),
    ids with a NUL or too long, an amount of 1e300, and a stored feature that makes the model answer NaN: each
    is dead-lettered with its reason, and the requests behind them are answered. An amount inside the bounds
    but far outside the training data is scored and flagged."""
    inf_user = f"u-inf-{uuid.uuid4().hex[:6]}"
    store = feature_store(served)
    with quiet_feast():
        names = [n for v, n in service_features(store, "fraud_model_v1") if v == "user_transactions"]
    with OnlineWriter(served, store) as writer:
        values = {n: np.array([1.0 if "count" in n else np.inf]) for n in names}  # counts are Int64
        writer.write("user_transactions", [inf_user], values, np.array([NOW_MS]))
    base = _requests(40)
    far = dict(base[1], request_id=f"r-far-{uuid.uuid4().hex}", amount=5_000_000.0)
    bad = {
        "user-id-control-character": dict(base[2], request_id=f"r-nul-{uuid.uuid4().hex}", user_id="u-\0-x"),
        "request-id-too-long": dict(base[3], request_id=f"r-long-{uuid.uuid4().hex}" + "r" * 200),
        "amount-too-large": dict(base[4], request_id=f"r-huge-{uuid.uuid4().hex}", amount=1e300),
        "score-not-finite": dict(base[5], request_id=f"r-nan-{uuid.uuid4().hex}", user_id=inf_user),
    }
    oversized = b"\xff" * 1_046_500
    big = Producer(served.kafka, **{"message.max.bytes": 2_000_000})
    big_key = f"big-{uuid.uuid4().hex}".encode()
    big.send(served.topics.score_requests, oversized, key=big_key, headers=[("trace", b"t" * 2000)])
    big.flush()
    _send(served, [*bad.values(), far, *base])
    seen = _predictions(served, {r["request_id"] for r in [far, *base]})
    by_id = {record["request_id"]: record for record, _ in seen}
    assert not {r["request_id"] for r in bad.values()} & by_id.keys()
    assert "req_amount_to_user_mean_24h" in by_id[far["request_id"]]["out_of_range"]
    assert by_id[far["request_id"]]["score"] == by_id[far["request_id"]]["score"]  # a number

    messages = _dead_letter_messages(served, [r["request_id"].encode() for r in bad.values()] + [big_key])
    cut = [m for m in messages if dict(m.headers()).get("streamscore.error.original-size") == b"1046500"]
    assert len(cut) == 1, [dict(m.headers()) for m in messages]
    assert sorted(read_dead_letter(m).reason for m in messages if m not in cut) == sorted(bad)
    headers = dict(cut[0].headers())
    assert headers["streamscore.error.original-sha256"].decode() == hashlib.sha256(oversized).hexdigest()
    assert headers["streamscore.error.truncated"] == b"headers,value"
    assert "trace" not in headers
    assert 0 < len(cut[0].value()) < len(oversized)


def _count_dead_letters(s: Settings, reason: str) -> int:
    count = 0
    with Consumer(s.kafka, f"dlq-{uuid.uuid4().hex}", [s.topics.dead_letters]) as consumer:
        empty = 0
        while empty < 3:
            batch = consumer.poll_batch(500, 0.3)
            empty = 0 if batch else empty + 1
            count += sum(read_dead_letter(m).reason == reason for m in batch)
    return count


def test_a_hot_swap_under_load_and_a_rollback_lose_nothing(served: Settings, worker: InferenceWorker) -> None:
    before = worker.version
    sent: list[dict[str, Any]] = []
    for step in range(20):
        batch = _requests(40, unknown_every=7)
        _send(served, batch)
        sent.extend(batch)
        if step == 8:
            new_version = register_model(served, seed=step + 100)
        time.sleep(0.1)
    deadline = time.monotonic() + 30
    while worker.version == before and time.monotonic() < deadline:
        time.sleep(0.1)
    late = _requests(40)
    _send(served, late)
    seen = _predictions(served, {r["request_id"] for r in sent + late})
    versions = {rec["request_id"]: rec["model_version"] for rec, _ in seen}
    assert worker.version == str(new_version)
    assert {versions[r["request_id"]] for r in late} == {str(new_version)}
    assert set(versions[r["request_id"]] for r in sent) <= {before, str(new_version)}

    # A rollback reaches the running worker the same way.
    Registry(served).rollback()
    deadline = time.monotonic() + 30
    while worker.version != before and time.monotonic() < deadline:
        time.sleep(0.1)
    after = _requests(40)
    _send(served, after)
    seen = _predictions(served, {r["request_id"] for r in after})
    assert {rec["model_version"] for rec, _ in seen if rec["request_id"] in {r["request_id"] for r in after}} == {
        before
    }


def _spawn(s: Settings, guarantee: str, log: Path) -> subprocess.Popen[bytes]:
    env = child_env(s)
    env["STREAMSCORE_INFERENCE__GUARANTEE"] = guarantee
    env["STREAMSCORE_METRICS_PORT"] = "0"
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "streamscore", "inference", "run"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


@retry(retry=retry_if_exception_type(KafkaException), stop=stop_after_delay(30), wait=wait_fixed(0.2), reraise=True)
def _lag(s: Settings) -> int:
    """Requests the workers' group has not committed (retried while its coordinator is still loading)."""
    return group_lag(s.kafka, s.inference.group_id, [s.topics.score_requests])


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_kill_9_mid_stream_loses_nothing(served: Settings, guarantee: str, tmp_path: Path) -> None:
    s = served.model_copy(
        update={
            "inference": served.inference.model_copy(
                update={"group_id": f"kill-{uuid.uuid4().hex[:8]}", "max_batch": 50}
            )
        }
    )
    requests = _requests(3000, unknown_every=3)
    early, late = requests[:2000], requests[2000:]
    _send(s, early)
    log = tmp_path / "worker.log"
    total = _lag(s)  # the topic holds earlier tests' requests too
    first = _spawn(s, guarantee, log)
    try:
        # Freeze it as soon as its first commit is visible, with the next batches in flight, and send the rest
        # while it is frozen: the kill then always lands mid-stream, however fast this machine is. (Not
        # measured after the kill: in exactly-once mode the dead worker's open transaction holds its group's
        # offsets until the restarted worker fences it.)
        deadline = time.monotonic() + 90
        left = total
        while time.monotonic() < deadline and left == total:
            time.sleep(0.02)
            left = _lag(s)
        first.send_signal(signal.SIGSTOP)
        assert left < total, f"no commit within 90 s: {left} of {total} requests left"
        _send(s, late)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = _spawn(s, guarantee, log)
        try:
            seen = _predictions(s, {r["request_id"] for r in requests}, committed=guarantee == "exactly-once",
                                timeout_s=120)  # fmt: skip
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    counts = Counter(rec["request_id"] for rec, _ in seen if rec["request_id"] in {r["request_id"] for r in requests})
    if guarantee == "exactly-once":
        assert set(counts.values()) == {1}, f"{sum(c > 1 for c in counts.values())} requests answered twice"
    else:
        assert min(counts.values()) >= 1


class _Redis:
    """A Redis of this test's own (the session's is shared), stopped and restarted on the same port and data."""

    def __init__(self, workdir: Path) -> None:
        from tests.conftest import free_port

        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir), "--appendonly",
             "yes", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis rewrites its append-only file before exiting
            self.proc.wait(10)


def _retries() -> float:
    from prometheus_client import REGISTRY

    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "streamscore_inference_retries"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def test_redis_down_delays_predictions_and_loses_none(served: Settings, tmp_path: Path) -> None:
    own = _Redis(tmp_path)
    own.start()
    tag = uuid.uuid4().hex[:8]
    topics = served.topics.model_copy(update={"score_requests": f"req-{tag}", "predictions": f"pred-{tag}"})
    create_topic(served, topics.score_requests, 2)
    create_topic(served, topics.predictions, 1)
    s = served.model_copy(
        update={
            "topics": topics,
            "redis": served.redis.model_copy(update={"url": f"redis://127.0.0.1:{own.port}/0"}),
            "inference": served.inference.model_copy(update={"group_id": f"redis-down-{tag}"}),
        }
    )
    store = feature_store(s)
    with quiet_feast():
        columns = service_features(store, "fraud_model_v1")
    with OnlineWriter(s, store) as writer:
        for view, ids in (("user_transactions", KNOWN_USERS), ("merchant_transactions", MERCHANTS)):
            names = [n for v, n in columns if v == view]
            writer.write(view, ids, {n: np.full(len(ids), 7.0) for n in names}, np.full(len(ids), NOW_MS, np.int64))
    w = InferenceWorker(s)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        before = _requests(50, unknown_every=10**9)
        _send(s, before)
        _predictions(s, {r["request_id"] for r in before})
        own.stop()
        retries = _retries()
        during = _requests(200, unknown_every=10**9)
        _send(s, during)
        deadline = time.monotonic() + 20
        while _retries() < retries + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _retries() >= retries + 2, "the worker did not retry while Redis was down"
        assert thread.is_alive()
        assert w.scored == len(before)  # nothing scored, so nothing committed, while the features are unreadable
        own.start()
        seen = _predictions(s, {r["request_id"] for r in during})
    finally:
        w.stop()
        thread.join(30)
        own.stop()
    records = {rec["request_id"]: rec for rec, _ in seen}
    # Scored with the stored features once Redis was back, not with defaults (u-new-0 has none anywhere).
    known = [r for r in during if not r["user_id"].startswith("u-new-")]
    assert len(known) == len(during) - 1
    assert all(records[r["request_id"]]["missing_features"] == [] for r in known)
