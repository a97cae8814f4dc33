"""The Locust load test against a real broker and a real inference worker, each in a process of its own.

Locust always runs as a subprocess: importing it monkey-patches the interpreter with gevent, which the test
process (and the worker, which loads Feast) must never see. Results are read from Locust's own CSV report, the
file an operator reads too.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streamscore.kafka import Consumer, Producer
from streamscore.serde import Serde
from streamscore.settings import Settings, child_env
from tests.inference.helpers import KNOWN_USERS, MERCHANTS, served_settings
from tests.kafka.helpers import create_topic

pytestmark = pytest.mark.integration

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtest" / "locustfile.py"
# The served stack's entities, so the worker finds online features for the load test's requests.
KNOWN_IDS = ["--user-id-format", "u-known-{:03d}", "--id-users", str(len(KNOWN_USERS)),
             "--merchant-id-format", "m-known-{:02d}", "--id-merchants", str(len(MERCHANTS))]  # fmt: skip


@pytest.fixture(scope="module")
def served(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The served stack with a transactions topic of its own (the worker reads it for delayed labels)."""
    s = served_settings(settings, tmp_path_factory.mktemp("loadtest"))
    transactions = create_topic(settings, f"tx-{uuid.uuid4().hex[:8]}", 1)
    return s.model_copy(update={"topics": s.topics.model_copy(update={"transactions": transactions})})


def _env(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in child_env(s).items() if not k.upper().startswith("LOCUST_")}
    env["STREAMSCORE_METRICS_PORT"] = "0"
    return env


def _fresh_topics(s: Settings) -> Settings:
    """Request and prediction topics that no worker reads."""
    tag = uuid.uuid4().hex[:8]
    requests = create_topic(s, f"req-{tag}", 2)
    predictions = create_topic(s, f"pred-{tag}", 1)
    return s.model_copy(update={"topics": s.topics.model_copy(update={"score_requests": requests,
                                                                      "predictions": predictions})})  # fmt: skip


def _round_trip(s: Settings, timeout_s: float) -> None:
    """One request through the worker, so the load test starts against a worker that has its partitions."""
    request_id = f"warm-{uuid.uuid4().hex}"
    request = {
        "request_id": request_id, "user_id": KNOWN_USERS[0], "merchant_id": MERCHANTS[0], "amount": 10.0,
        "currency": "EUR", "country": "DE", "channel": "POS", "request_time": datetime.now(tz=UTC),
    }  # fmt: skip
    producer = Producer(s.kafka)
    producer.send(s.topics.score_requests, Serde("score_request").encode(request), key=request["user_id"])
    producer.flush()
    serde = Serde("prediction")
    with Consumer(s.kafka, f"warm-{uuid.uuid4().hex}", [s.topics.predictions]) as consumer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(serde.decode(m.value())["request_id"] == request_id for m in consumer.poll_batch(100, 0.3)):
                return
    raise AssertionError(f"no prediction for the warm-up request within {timeout_s} s")


@pytest.fixture(scope="module")
def worker(served: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A real inference worker (``python -m streamscore inference run``) serving ``served``'s topics."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamscore", "inference", "run"], env=_env(served),
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while b"in group" not in log.read_bytes():
            assert proc.poll() is None, f"the worker exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the worker did not start: {log.read_text()[-3000:]}"
            time.sleep(0.1)
        _round_trip(served, timeout_s=60)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _locust(
    s: Settings, out: Path, *args: str, users: int = 4, run_time: str = "6s"
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r",
               str(users), "-t", run_time, "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
               "--only-summary", *args]  # fmt: skip
    return subprocess.run(command, env=_env(s), capture_output=True, text=True, timeout=90, check=False)


def _stats(out: Path) -> dict[str, dict[str, str]]:
    """Locust's ``*_stats.csv``, one row per request name (``Aggregated`` included)."""
    with (out / "locust_stats.csv").open(newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def _assert_healthy(row: dict[str, str], *, rate: float, seconds: float, timeout_ms: float) -> None:
    """No failures, ordered percentiles inside the timeout, and the paced rate: never above it, and at least a
    quarter of it (the users start over the first second, and the cores are shared with other test runs)."""
    requests, failures = int(row["Request Count"]), int(row["Failure Count"])
    assert requests >= rate * seconds / 4, f"{requests} requests in {seconds} s at {rate}/s: {row}"
    assert float(row["Requests/s"]) <= rate * 1.3, f"the rate is not held at {rate}/s: {row}"
    assert failures == 0, row
    p50, p95, p99, p100 = (float(row[q]) for q in ("50%", "95%", "99%", "100%"))
    assert 0 < p50 <= p95 <= p99 <= p100 < timeout_ms, row
    assert float(row["Min Response Time"]) > 0, row
    assert float(row["Average Content Size"]) > 0, row


def test_locustfile_imports_neither_faust_nor_feast() -> None:
    """gevent patches the Locust process; faust and Feast break under it, so the locustfile must not load them."""
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('locustfile', {str(LOCUSTFILE)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'faust', 'feast', 'mode', 'aiokafka', 'redis'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr


def test_score_and_transaction_round_trips_through_a_worker(worker: Settings, tmp_path: Path) -> None:
    done = _locust(worker, tmp_path, "--rate", "100", "--score-timeout", "5", *KNOWN_IDS,
                   "ScoreRequestUser", "TransactionUser")  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    stats = _stats(tmp_path)
    assert set(stats) == {"score", "transaction", "Aggregated"}, stats
    # 4 users, 100 requests/s in all: 2 users and 50 requests/s for each class.
    _assert_healthy(stats["score"], rate=50, seconds=6, timeout_ms=5000)
    _assert_healthy(stats["transaction"], rate=50, seconds=6, timeout_ms=5000)
    assert (tmp_path / "locust.html").stat().st_size > 0
    assert "score" in (tmp_path / "locust.html").read_text()
    # The answers really came from the worker, for entities that have features online.
    serde = Serde("prediction")
    ours = []
    with Consumer(worker.kafka, f"check-{uuid.uuid4().hex}", [worker.topics.predictions]) as consumer:
        deadline = time.monotonic() + 30
        while len(ours) < int(stats["score"]["Request Count"]) and time.monotonic() < deadline:
            records = [serde.decode(m.value()) for m in consumer.poll_batch(1000, 0.5)]
            ours.extend(r for r in records if r["request_id"].startswith("lt-"))
    assert len(ours) >= int(stats["score"]["Request Count"])
    assert any(not r["missing_features"] for r in ours), "no load-test request found its features online"


def test_without_a_worker_every_score_request_fails(served: Settings, tmp_path: Path) -> None:
    done = _locust(_fresh_topics(served), tmp_path, "--rate", "20", "--score-timeout", "1", "ScoreRequestUser",
                   users=2, run_time="4s")  # fmt: skip
    assert done.returncode == 1, done.stderr[-5000:]
    row = _stats(tmp_path)["score"]
    assert int(row["Request Count"]) > 0
    assert int(row["Failure Count"]) == int(row["Request Count"]), row
    assert "no prediction within 1 s" in (tmp_path / "locust_failures.csv").read_text()


def test_echo_measures_the_bare_kafka_round_trip(served: Settings, tmp_path: Path) -> None:
    done = _locust(_fresh_topics(served), tmp_path, "--rate", "100", "--echo", "ScoreRequestUser", run_time="4s")
    assert done.returncode == 0, done.stderr[-5000:]
    stats = _stats(tmp_path)
    assert set(stats) == {"echo", "Aggregated"}, stats
    _assert_healthy(stats["echo"], rate=100, seconds=4, timeout_ms=5000)
