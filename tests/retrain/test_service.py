"""The retrainer against the real broker and MLflow: dead letters, a failed retrain it survives, crash replay."""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from streamscore.generator import GeneratorConfig, produce_to_kafka, start_ending_by
from streamscore.kafka import Consumer, Producer, read_dead_letter
from streamscore.models import Registry
from streamscore.retrain import Retrainer, decisions, retrain_now
from streamscore.serde import Serde
from streamscore.settings import Settings
from tests.inference.helpers import served_settings
from tests.kafka.helpers import create_topic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def watched(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A registry with a champion; the retrainer's own drift, dead-letter and (empty) transactions topics."""
    s = served_settings(settings, tmp_path_factory.mktemp("retrainer"))
    tag = uuid.uuid4().hex[:8]
    topics = s.topics.model_copy(update={"drift": f"drift-{tag}", "dead_letters": f"dlq-{tag}",
                                         "transactions": f"tx-{tag}"})  # fmt: skip
    for name in (topics.drift, topics.dead_letters, topics.transactions):
        create_topic(s, name, 1)
    return s.model_copy(
        update={
            "topics": topics,
            "retrain": s.retrain.model_copy(update={"group_id": f"retrain-{tag}", "min_reports": 3}),
        }
    )


def _report(s: Settings, i: int, version: str, drifted: bool = True) -> dict[str, Any]:
    start = datetime(2026, 11, 30, tzinfo=UTC) + timedelta(seconds=30 * i)
    return {
        "model_name": s.model.name, "model_version": version, "worker": "w0", "window_start": start,
        "window_end": start + timedelta(seconds=30), "count": 1000,
        "features": [{"feature": "amount", "statistic": "psi", "value": 0.9 if drifted else 0.01, "threshold": 0.2,
                      "drifted": drifted}],
        "detectors": [], "drifted": drifted,
    }  # fmt: skip


def _send(s: Settings, values: list[bytes]) -> None:
    producer = Producer(s.kafka)
    for value in values:
        producer.send(s.topics.drift, value, key="w0")
    producer.flush()


def _steps(retrainer: Retrainer, until: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, "the retrainer did not get there in time"
        retrainer.step(0.2)


def _committed(s: Settings) -> int:
    from confluent_kafka import TopicPartition

    with Consumer(s.kafka, s.retrain.group_id, []) as probe:
        (tp,) = probe.raw.committed([TopicPartition(s.topics.drift, 0)], timeout=10)
        return int(tp.offset)


def _decisions_count(decision: str) -> float:
    return REGISTRY.get_sample_value("streamscore_retrain_decisions_total", {"decision": decision}) or 0.0


def test_bad_reports_are_dead_lettered_and_a_failed_retrain_is_survived(watched: Settings, tmp_path: Path) -> None:
    s = watched
    champion = str(Registry(s).champion().version)  # type: ignore[union-attr]
    serde = Serde("drift_report")
    retrainer = Retrainer(s)
    try:
        _steps(retrainer, lambda: bool(retrainer.consumer.raw.assignment()))
        failed_before = _decisions_count("failed")
        _send(s, [b"not avro", *(serde.encode(_report(s, i, champion)) for i in range(3))])
        _steps(retrainer, lambda: bool(retrainer.outcomes))
        # No transactions at all: the retrain fails, is recorded, and the service goes on.
        (outcome,) = retrainer.outcomes
        assert outcome.outcome == "failed"
        assert "no transactions" in outcome.detail
        assert _decisions_count("failed") == failed_before + 1
        assert [d.kind for d in decisions(s)][-2:] == ["triggered", "failed"]
        retrainer.step(0.2)
        assert _committed(s) == 4  # the streak ended with the retrain: all four committed
    finally:
        retrainer.consumer.close()
    with Consumer(s.kafka, f"dlq-{uuid.uuid4().hex}", [s.topics.dead_letters]) as reader:
        deadline = time.monotonic() + 30
        letters = []
        while not letters and time.monotonic() < deadline:
            letters = [read_dead_letter(m) for m in reader.poll_batch(10, 0.5)]
    assert [(d.stage, d.reason, d.value) for d in letters] == [("retrain", "bad-magic", b"not avro")]


def test_a_crash_mid_streak_replays_the_streak(watched: Settings) -> None:
    s = watched.model_copy(
        update={"retrain": watched.retrain.model_copy(update={"group_id": f"retrain-{uuid.uuid4().hex[:8]}"})}
    )
    champion = str(Registry(s).champion().version)  # type: ignore[union-attr]
    serde = Serde("drift_report")
    first = Retrainer(s)
    _steps(first, lambda: bool(first.consumer.raw.assignment()))
    _send(s, [serde.encode(_report(s, 0, champion, drifted=False))])  # quiet: committed at once
    _steps(first, lambda: _committed(s) >= 0)
    start = _committed(s)
    _send(s, [serde.encode(_report(s, i, champion)) for i in (1, 2)])
    _steps(first, lambda: first.policy.streak == 2)
    first.consumer.close()  # a crash: the open streak's reports were never committed
    assert _committed(s) == start

    again = Retrainer(s)
    try:
        _steps(again, lambda: again.policy.streak == 2)  # rebuilt from the replayed reports
        _send(s, [serde.encode(_report(s, 3, champion))])
        _steps(again, lambda: bool(again.outcomes))
        assert "3 drifted reports in a row" in decisions(s)[-2].detail
    finally:
        again.consumer.close()


def test_a_retrain_over_a_window_many_times_its_buffer_succeeds(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = served_settings(settings, tmp_path)
    topic = f"tx-{uuid.uuid4().hex[:8]}"
    create_topic(s, topic, 3)
    s = s.model_copy(
        update={
            "topics": s.topics.model_copy(update={"transactions": topic}),
            "retrain": s.retrain.model_copy(update={"window_h": 6.0, "warmup_h": 2.0, "buffer_rows": 250}),
            "training": s.training.model_copy(update={"min_positives": 5, "max_epochs": 5}),
        }
    )
    config = GeneratorConfig(events=8000, rate=0.3, seed=5, users=400, merchants=60, fraud_rate=0.04)
    produce_to_kafka(replace(config, start=start_ending_by(config, datetime.now(tz=UTC) - timedelta(minutes=1))), s)
    with caplog.at_level(logging.INFO, logger="streamscore.retrain"):
        outcome = retrain_now(s, "a test: a window of 8,000 transactions through a buffer of 250")
    assert outcome.outcome in ("promoted", "rejected"), outcome.detail
    assert outcome.version is not None
    (read,) = [m for r in caplog.records if (m := re.match(r"(\d+) transactions .* in (\d+) spill", r.getMessage()))]
    rows, spills = int(read[1]), int(read[2])
    assert rows == 8000
    assert spills >= rows // 250  # never more than 250 decoded transactions held
    assert not list((s.data_dir / "retrain").iterdir())  # the window and its spill files are gone
