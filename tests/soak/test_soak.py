"""The chaos soak: the whole loop on its own stack, under faults, then one verdict over everything it produced.

Like Kafka Streams' EOS system test and Jepsen's Kafka checkers: two feature processors and two inference
workers run while a producer sends transactions and score requests (with a small share of bad messages of
every kind), and a fault schedule kill -9s a random service and restarts it (a processor on an empty
disk), restarts the broker, and kill -9s Redis. When the time is up every service is brought back, the
pipeline drains, and a verifier reads every topic and the online store: each good request answered at
least once, nothing lost, dead letters only for what was injected, and every feature of every entity
equal to the backfill over the same events. ``make soak DURATION=10m`` runs it long; ``make test`` runs a
short profile (``STREAMSCORE_SOAK_DURATION``, default 60s).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from streamscore.features import load_plans, rules_for
from streamscore.generator import GeneratorConfig, generate_frame, start_ending_by
from streamscore.kafka import Consumer, Producer, ensure_topics, group_lag, read_dead_letter
from streamscore.serde import Serde
from streamscore.settings import Settings, child_env
from streamscore.stack import Stack
from streamscore.store import apply_definitions
from tests.conftest import stack_settings
from tests.features.harness import ProcessorProcess, check_against_backfill
from tests.inference.helpers import register_model

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ("kill-processor-on-empty-disk", "kill-worker", "restart-broker", "kill-redis")


def _duration_s() -> float:
    raw = os.environ.get("STREAMSCORE_SOAK_DURATION", "60s").strip()
    unit = {"s": 1, "m": 60, "h": 3600}.get(raw[-1], 1)
    return float(raw[:-1] if raw[-1] in "smh" else raw) * unit


class _Worker:
    def __init__(self, s: Settings, log: Path) -> None:
        self.s, self.log, self.proc = s, log, None
        self.start()

    def start(self) -> None:
        env = child_env(self.s)
        env["STREAMSCORE_METRICS_PORT"] = "0"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamscore", "inference", "run"], cwd=ROOT, env=env, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class _Traffic:
    """Transactions (a generated history ending now, sent in time order) and score requests, with bad ones."""

    def __init__(self, s: Settings, events: int) -> None:
        self.s = s
        config = GeneratorConfig(events=events, users=80, merchants=20, rate=events / 7200, seed=7,
                                 out_of_order_rate=0.0, late_rate=0.0)  # fmt: skip
        self.frame = generate_frame(replace(config, start=start_ending_by(config, datetime.now(tz=UTC))))
        self.sent_tx: list[dict[str, Any]] = []
        self.good_requests: set[str] = set()
        self.injected: Counter[tuple[str, str]] = Counter()  # (stage, reason) -> count

    def send(self, stop_at: float) -> None:
        tx_serde, req_serde = Serde("transaction"), Serde("score_request")
        producer = Producer(self.s.kafka, **{"message.max.bytes": 2_000_000})
        records = self.frame.to_dict("records")
        chunk = max(1, len(records) // 40)
        bad_at = {5: "nul", 15: "huge", 25: "garbage", 32: "oversized"}
        for step, start in enumerate(range(0, len(records), chunk)):
            for record in records[start : start + chunk]:
                record["event_time"] = record["event_time"].to_pydatetime()
                record["is_fraud"] = bool(record["is_fraud"])
                producer.send(self.s.topics.transactions, tx_serde.encode(record), key=record["user_id"])
                self.sent_tx.append(record)
                request = {
                    "request_id": f"r-{uuid.uuid4().hex}", "user_id": record["user_id"],
                    "merchant_id": record["merchant_id"], "amount": float(record["amount"]), "currency": "EUR",
                    "country": "DE", "channel": record["channel"], "request_time": datetime.now(tz=UTC),
                }  # fmt: skip
                producer.send(self.s.topics.score_requests, req_serde.encode(request), key=request["user_id"])
                self.good_requests.add(request["request_id"])
            kind = bad_at.get(step)
            if kind is not None:
                self._bad(producer, tx_serde, req_serde, kind, records[start])
            producer.flush()
            time.sleep(max(0.0, (stop_at - time.monotonic()) / max(1, 40 - step)))

    def _bad(self, producer: Producer, tx_serde: Serde, req_serde: Serde, kind: str, like: dict[str, Any]) -> None:
        topics = self.s.topics
        if kind == "garbage":
            producer.send(topics.score_requests, b"\x01not avro", key=b"g")
            producer.send(topics.transactions, b"\x01not avro", key=b"g")
            self.injected.update([("inference", "bad-magic"), ("features", "undecodable-bad-magic")])
            return
        if kind == "oversized":
            producer.send(topics.score_requests, b"\xff" * 1_046_500, key=b"big")
            self.injected[("inference", "bad-magic")] += 1
            return
        tx = dict(like, event_id=f"bad-{uuid.uuid4().hex}")
        request = {
            "request_id": f"r-bad-{uuid.uuid4().hex}", "user_id": like["user_id"], "merchant_id": like["merchant_id"],
            "amount": 10.0, "currency": "EUR", "country": "DE", "channel": "POS", "request_time": datetime.now(tz=UTC),
        }  # fmt: skip
        if kind == "nul":
            tx["user_id"] = request["user_id"] = "u-\0-x"
            reason = "user-id-control-character"
        else:
            tx["amount"] = request["amount"] = 1e12
            reason = "amount-too-large"
        producer.send(topics.transactions, tx_serde.encode(tx), key=str(like["user_id"]))
        producer.send(topics.score_requests, req_serde.encode(request), key=str(like["user_id"]))
        self.sent_tx.append(tx)
        self.injected.update([("features", reason), ("inference", reason)])


def _read_all(s: Settings, topic: str) -> list[Any]:
    out: list[Any] = []
    with Consumer(s.kafka, f"verify-{uuid.uuid4().hex}", [topic]) as consumer:
        idle = 0
        while idle < 6:
            batch = consumer.poll_batch(2000, 0.5)
            idle = 0 if batch else idle + 1
            out.extend(batch)
    return out


def _wait_drained(s: Settings, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    groups = (
        (s.features.group_id, [s.topics.transactions, s.topics.transactions_by_merchant]),
        (s.inference.group_id, [s.topics.score_requests]),
    )
    while time.monotonic() < deadline:
        try:
            if all(group_lag(s.kafka, g, t) == 0 for g, t in groups):
                return
        except Exception:  # the coordinator is still loading after a broker restart: ask again
            pass
        time.sleep(1)
    raise AssertionError(f"the pipeline did not drain within {timeout_s:.0f}s")


def test_chaos_soak_loses_nothing_and_every_feature_equals_the_backfill(tmp_path: Path) -> None:
    duration = _duration_s()
    stack = Stack(stack_settings(tmp_path / "stack", features={"checkpoint_interval_s": 1.0}))
    stack.up()
    procs: list[Any] = []
    try:
        s = stack.settings.model_copy(update={"data_dir": tmp_path / "data"})
        ensure_topics(s)
        apply_definitions(s)
        register_model(s, seed=1)
        traffic = _Traffic(s, events=max(2000, int(duration * 60)))
        processors = [ProcessorProcess(s, tmp_path / f"processor-{i}.log").start() for i in range(2)]
        workers = [_Worker(s, tmp_path / f"worker-{i}.log") for i in range(2)]
        procs = [*processors, *workers]
        started = time.monotonic()
        sender = threading.Thread(target=traffic.send, args=(started + duration,), daemon=True)
        sender.start()

        rng = random.Random(13)
        done: Counter[str] = Counter()
        for n, fault in enumerate(FAULTS * max(1, int(duration // 60))):
            time.sleep(max(0.0, started + duration * (n + 1) / (len(FAULTS) + 1) - time.monotonic()))
            if fault == "kill-processor-on-empty-disk":
                victim = rng.choice(processors)
                victim.kill()
                for local in ("faust", "features"):
                    shutil.rmtree(s.data_dir / local, ignore_errors=True)
                victim.start()
            elif fault == "kill-worker":
                worker = rng.choice(workers)
                worker.kill()
                worker.start()
            elif fault == "restart-broker":
                kafka = next(c for c in stack.components if c.name == "kafka")
                stack._process(kafka).stop()
                stack.up()
            else:
                redis_component = next(c for c in stack.components if c.name == "redis")
                record = stack._process(redis_component).running()
                assert record is not None
                os.kill(record.pid, signal.SIGKILL)
                time.sleep(0.5)
                stack.up()
            done[fault] += 1
        sender.join(duration + 120)
        for p in processors:
            if not p.alive():
                p.start()
        _wait_drained(s, 300)

        predictions = Serde("prediction")
        answered = Counter(predictions.decode(m.value())["request_id"] for m in _read_all(s, s.topics.predictions))
        lost = traffic.good_requests - answered.keys()
        duplicates = sum(c - 1 for r, c in answered.items() if r in traffic.good_requests)
        letters = Counter((d.stage, d.reason) for d in map(read_dead_letter, _read_all(s, s.topics.dead_letters)))
        plans = load_plans(s)
        frame = pd.DataFrame(traffic.sent_tx)
        frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
        checked, deadline = 0, time.monotonic() + 90
        while True:  # a Redis restart is repaired at the processors' next checkpoint round
            try:
                checked = check_against_backfill(s, plans, rules_for(s, plans), frame, tmp_path, label=str(checked))
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        summary = {
            "duration_s": round(time.monotonic() - started), "transactions": len(traffic.sent_tx),
            "requests": len(traffic.good_requests), "predictions": sum(answered.values()), "lost": len(lost),
            "duplicates": duplicates, "faults": dict(done),
            "dead_letters": {f"{stage}/{reason}": n for (stage, reason), n in sorted(letters.items())},
            "features_checked": checked, "features_mismatched": 0,
        }  # fmt: skip
        print("SOAK " + json.dumps(summary))
        assert not lost, f"{len(lost)} requests never answered: {summary}"
        assert set(letters) == set(traffic.injected), summary
        assert all(letters[k] >= n for k, n in traffic.injected.items()), summary
    finally:
        for p in procs:
            p.stop()
        stack.down(wipe=True)
