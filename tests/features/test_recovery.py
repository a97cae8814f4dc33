"""State that moves: the processor's windows survive a new host (empty data directory), kill -9, partitions
moving between processes, changed definitions, an older checkpoint and a recreated topic; idle entities are
evicted and come back right. Every case ends with every online feature of every entity (read through Feast)
equal to the backfill and the pandas reference."""

from __future__ import annotations

import re
import shutil
import threading
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import confluent_kafka
import pandas as pd
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from feast import Field
from feast.aggregation import Aggregation
from feast.types import Float64

from streamscore.features import load_plans, rules_for
from streamscore.features.changelog import CHECKPOINT_KEY
from streamscore.generator import GeneratorConfig, generate_frame, start_ending_by
from streamscore.kafka import Producer, admin_config, consumer_config, ensure_topics, state_topic
from streamscore.settings import Settings
from streamscore.store import apply_definitions, feature_store, quiet_feast
from tests.conftest import free_port
from tests.features.harness import (
    ProcessorProcess,
    check_against_backfill,
    isolated_run,
    produce,
    wait_caught_up,
    wait_lag,
)

pytestmark = pytest.mark.integration


def _frame(seed: int, events: int = 2400, users: int = 60, merchants: int = 25, hours: float = 3.0) -> pd.DataFrame:
    config = GeneratorConfig(
        events=events, users=users, merchants=merchants, rate=events / (hours * 3600), seed=seed,
        out_of_order_rate=0.03, late_rate=0.005,
    )  # fmt: skip
    return generate_frame(replace(config, start=start_ending_by(config, datetime.now(tz=UTC))))


def _setup(settings: Settings, tmp: Path, name: str, redis_db: int, **features: object) -> Settings:
    s = isolated_run(
        settings, tmp / "a", f"{name}-{tmp.name[-10:]}".replace("_", "-"), redis_db=redis_db,
        checkpoint_interval_s=0.5, allowed_lateness_s=30.0, batch_size=300, **features,
    )  # fmt: skip
    ensure_topics(s)
    apply_definitions(s)
    return s


def _on(s: Settings, host: Path) -> Settings:
    """The processor on another host: nothing of the last one's local files (the shared data directory holds
    only the Feast registry and offline tables; the processor's own directories are removed), its own port."""
    for local in ("faust", "features"):
        shutil.rmtree(s.data_dir / local, ignore_errors=True)
    host.mkdir()
    return s.model_copy(update={"metrics_port": free_port()})


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.mark.parametrize("stop", ["clean"])  # kill -9: tests/features/test_pipeline.py, the same way
def test_a_new_host_with_an_empty_disk_takes_over(engine: str, settings: Settings, tmp_path: Path, stop: str) -> None:
    s = _setup(settings, tmp_path, f"host-{stop}", redis_db=3 if stop == "clean" else 4, engine=engine)
    plans, frame = load_plans(s), _frame(seed=21)
    first, second = len(frame) // 3, 2 * len(frame) // 3
    produce(s, frame.iloc[:first], [])
    old = ProcessorProcess(_on(s, tmp_path / "host-a"), tmp_path / "a.log").start()
    wait_caught_up(s, old)
    if stop == "clean":
        assert old.stop() == 0
        produce(s, frame.iloc[first:second], [])
    else:  # killed with events applied after its last checkpoint and more still to come
        produce(s, frame.iloc[first:second], [])
        deadline = time.monotonic() + 120
        while wait_lag(s, [s.topics.transactions]) > (second - first) // 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        old.freeze()
        old.kill()
    produce(s, frame.iloc[second:], [])
    with ProcessorProcess(_on(s, tmp_path / "host-b"), tmp_path / "b.log") as new:
        wait_caught_up(s, new)
    log = (tmp_path / "b.log").read_text()
    assert "state restored" in log, log[-3000:]
    assert "rebuilding" not in log, log[-3000:]
    assert check_against_backfill(s, plans, rules_for(s, plans), frame, tmp_path) > 60 * 14


def test_partitions_move_between_processes_while_events_flow(engine: str, settings: Settings, tmp_path: Path) -> None:
    s = _setup(settings, tmp_path, "rebalance", redis_db=5, engine=engine)
    plans, frame = load_plans(s), _frame(seed=22, events=3000)
    produce(s, frame.iloc[:1000], [])
    one = ProcessorProcess(_on(s, tmp_path / "one"), tmp_path / "one.log").start()
    wait_caught_up(s, one)

    def trickle() -> None:  # the rest arrives while the partitions move twice
        for start in range(1000, len(frame), 100):
            produce(s, frame.iloc[start : start + 100], [])
            time.sleep(0.15)

    sender = threading.Thread(target=trickle)
    sender.start()
    two = ProcessorProcess(_on(s, tmp_path / "two"), tmp_path / "two.log").start()
    time.sleep(8)  # a rebalance: some partitions go to `two`
    assert one.stop() == 0  # and then all of them
    sender.join()
    wait_caught_up(s, two)
    two.stop()
    log = (tmp_path / "two.log").read_text()
    assert log.count("state restored") >= 2, log[-3000:]
    assert "rebuilding" not in log, log[-3000:]
    assert check_against_backfill(s, plans, rules_for(s, plans), frame, tmp_path) > 60 * 14


def test_a_feature_added_to_a_view_is_rebuilt_from_the_source(engine: str, settings: Settings, tmp_path: Path) -> None:
    # A long idle margin: the rebuild replays the whole (3 h) stream, so every entity can be checked.
    s = _setup(settings, tmp_path, "definitions", redis_db=6, idle_margin_s=12 * 3600.0, engine=engine)
    frame = _frame(seed=23)
    produce(s, frame.iloc[: len(frame) // 2], [])
    with ProcessorProcess(_on(s, tmp_path / "v1"), tmp_path / "v1.log") as proc:
        wait_caught_up(s, proc)

    store = feature_store(s)
    with quiet_feast():
        view = store.get_stream_feature_view("user_transactions")
        added = Aggregation(
            column="amount", function="min", time_window=timedelta(hours=1), slide_interval=timedelta(minutes=1),
            name="user_amount_min_1h",
        )  # fmt: skip
        view.aggregations.append(added)
        view.features.append(Field(name="user_amount_min_1h", dtype=Float64))
        store.apply([view])
    plans = load_plans(s)
    assert "user_amount_min_1h" in next(p for p in plans if p.name == "user_transactions").feature_names

    produce(s, frame.iloc[len(frame) // 2 :], [])
    with ProcessorProcess(_on(s, tmp_path / "v2"), tmp_path / "v2.log") as proc:
        wait_caught_up(s, proc)
    log = (tmp_path / "v2.log").read_text()
    assert "feature definitions changed" in log, log[-3000:]
    assert "state rebuilt" in log, log[-3000:]
    assert check_against_backfill(s, plans, rules_for(s, plans), frame, tmp_path) > 60 * 15


def _checkpoints(s: Settings) -> list[confluent_kafka.Message]:
    consumer = confluent_kafka.Consumer(consumer_config(s.kafka, "test-read-state"))
    out: list[confluent_kafka.Message] = []
    try:
        for stage in ("ingest", "rekey"):
            topic = state_topic(s, stage)
            for p in range(s.topics.partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if high <= low:
                    continue
                consumer.assign([TopicPartition(topic, p, low)])
                seen = low
                while seen < high:
                    for m in consumer.consume(1000, timeout=1.0):
                        if m.error() is None:
                            seen = max(seen, (m.offset() or 0) + 1)
                            if m.key() == CHECKPOINT_KEY:
                                out.append(m)
    finally:
        consumer.close()
    return out


def test_an_older_checkpoint_is_detected_and_rebuilt(engine: str, settings: Settings, tmp_path: Path) -> None:
    s = _setup(settings, tmp_path, "stale", redis_db=7, idle_margin_s=12 * 3600.0, engine=engine)
    plans, frame = load_plans(s), _frame(seed=24)
    produce(s, frame.iloc[: len(frame) // 3], [])
    with ProcessorProcess(_on(s, tmp_path / "h1"), tmp_path / "h1.log") as proc:
        wait_caught_up(s, proc)
    older = _checkpoints(s)
    assert older
    produce(s, frame.iloc[len(frame) // 3 : 2 * len(frame) // 3], [])
    with ProcessorProcess(_on(s, tmp_path / "h2"), tmp_path / "h2.log") as proc:
        wait_caught_up(s, proc)
    producer = Producer(s.kafka)  # the older checkpoints come back, newest in the topic
    for m in older:
        producer.send(m.topic() or "", m.value(), key=m.key(), headers=m.headers(), partition=m.partition())
    producer.flush()
    produce(s, frame.iloc[2 * len(frame) // 3 :], [])
    with ProcessorProcess(_on(s, tmp_path / "h3"), tmp_path / "h3.log") as proc:
        wait_caught_up(s, proc)
    log = (tmp_path / "h3.log").read_text()
    assert "but the group committed" in log, log[-3000:]
    assert check_against_backfill(s, plans, rules_for(s, plans), frame, tmp_path) > 60 * 14


QUIET = {"out_of_order_rate": 0.0, "late_rate": 0.0}  # no event far behind its partition


def test_idle_entities_are_evicted_and_come_back_right(engine: str, settings: Settings, tmp_path: Path) -> None:
    s = _setup(settings, tmp_path, "evict", redis_db=8, idle_margin_s=0.0, engine=engine)
    plans = load_plans(s)
    # 200 cards active for an hour; then a day and more of 20 other cards (the first ones idle past the 24 h
    # windows); then a few of the first cards come back.
    end = datetime.now(tz=UTC) - timedelta(minutes=2)
    early = GeneratorConfig(events=1500, users=200, merchants=20, rate=1500 / 3600, seed=31, **QUIET)
    busy = GeneratorConfig(events=1500, users=20, merchants=20, rate=1500 / (28 * 3600), seed=32, **QUIET)
    back = GeneratorConfig(events=60, users=200, merchants=20, rate=60 / 600, seed=33, **QUIET)
    c = generate_frame(replace(back, start=start_ending_by(back, end)))
    c["event_id"] = "back-" + c["event_id"]
    b = generate_frame(replace(busy, start=start_ending_by(busy, c["event_time"].min() - timedelta(minutes=10))))
    b["user_id"] = "busy-" + b["user_id"]
    a = generate_frame(replace(early, start=start_ending_by(early, b["event_time"].min() - timedelta(minutes=5))))
    assert b["event_time"].max() - a["event_time"].max() > timedelta(hours=24, minutes=10)
    idle = a["user_id"].nunique()
    port = free_port()
    s = s.model_copy(update={"metrics_port": port})
    with ProcessorProcess(s, tmp_path / "p.log") as proc:
        produce(s, a, [])
        wait_caught_up(s, proc)
        time.sleep(1.5)  # a checkpoint round after the last batch updates the gauges
        held = _metric(port, "streamscore_features_entities")
        size = _metric(port, "streamscore_features_state_bytes")
        produce(s, b, [])
        wait_caught_up(s, proc)
        time.sleep(1.5)
        assert _metric(port, "streamscore_features_evicted_entities_total") >= idle
        assert _metric(port, "streamscore_features_entities") <= held - idle + 20
        assert _metric(port, "streamscore_features_state_bytes") < size
        produce(s, c, [])
        wait_caught_up(s, proc)
    frame = pd.concat([a, b, c], ignore_index=True)
    assert check_against_backfill(s, plans, rules_for(s, plans), frame, tmp_path) > idle * 10


def test_a_recreated_topic_is_read_from_its_start(engine: str, settings: Settings, tmp_path: Path) -> None:
    s = _setup(settings, tmp_path, "recreated", redis_db=9, engine=engine)
    plans = load_plans(s)
    before = _frame(seed=25, events=1500)
    produce(s, before, [])
    with ProcessorProcess(_on(s, tmp_path / "h1"), tmp_path / "h1.log") as proc:
        wait_caught_up(s, proc)
    admin = AdminClient(admin_config(s.kafka))
    admin.delete_topics([s.topics.transactions], operation_timeout=30)[s.topics.transactions].result()
    deadline = time.monotonic() + 60
    while s.topics.transactions in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    ensure_topics(s)
    after = _frame(seed=26, events=600)  # fewer records than before: the old offsets would skip them all
    after["user_id"] = "new-" + after["user_id"]
    after["merchant_id"] = "new-" + after["merchant_id"]
    produce(s, after, [])
    with ProcessorProcess(_on(s, tmp_path / "h2"), tmp_path / "h2.log") as proc:
        wait_caught_up(s, proc)
    assert check_against_backfill(s, plans, rules_for(s, plans), after, tmp_path) > 40 * 14
