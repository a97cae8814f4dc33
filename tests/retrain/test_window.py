"""The recent window read back from the transactions log: the event-time cut, arrival order, the warm-up."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from streamscore.generator import (
    ARROW_SCHEMA,
    GeneratorConfig,
    generate,
    generate_frame,
    produce_to_kafka,
    start_ending_by,
)
from streamscore.kafka import Producer
from streamscore.retrain import WindowError, export_window
from streamscore.serde import Serde
from streamscore.settings import Settings
from tests.kafka.helpers import create_topic

pytestmark = pytest.mark.integration


def _settings(settings: Settings, window_h: float, warmup_h: float) -> Settings:
    topic = f"tx-{uuid.uuid4().hex[:8]}"
    create_topic(settings, topic, 3)
    return settings.model_copy(
        update={
            "topics": settings.topics.model_copy(update={"transactions": topic}),
            "retrain": settings.retrain.model_copy(update={"window_h": window_h, "warmup_h": warmup_h}),
        }
    )


def _buffer(settings: Settings, rows: int) -> Settings:
    return settings.model_copy(update={"retrain": settings.retrain.model_copy(update={"buffer_rows": rows})})


def test_the_window_ends_at_the_newest_transaction_and_keeps_its_warmup(settings: Settings, tmp_path: Path) -> None:
    s = _settings(settings, window_h=2.0, warmup_h=1.0)
    # The stream ends a minute ago at whatever hour this runs (its span follows the daily cycle), so the
    # unlabelled event sent "now" below is the newest.
    config = GeneratorConfig(events=3000, rate=0.2, seed=4)
    config = replace(config, start=start_ending_by(config, datetime.now(tz=UTC) - timedelta(minutes=1)))
    produce_to_kafka(config, s)
    producer = Producer(s.kafka)
    producer.send(s.topics.transactions, b"not avro", key="u1")  # skipped and counted, not fatal
    # Newer but unlabelled: nothing to learn from yet, so the window must end before it.
    unlabelled = {**generate(config).__next__()[0], "event_id": "unlabelled", "is_fraud": None,
                  "event_time": datetime.now(tz=UTC)}  # fmt: skip
    producer.send(s.topics.transactions, Serde("transaction").encode(unlabelled), key=unlabelled["user_id"])
    producer.flush()
    window = export_window(s, tmp_path / "w.parquet")

    expected = generate_frame(config)
    newest = expected["event_time"].max().to_pydatetime()
    assert window.end == newest + timedelta(milliseconds=1)
    assert window.start == window.end - timedelta(hours=2)
    assert window.warmup_start == window.start - timedelta(hours=1)
    kept = expected[expected["event_time"] >= window.warmup_start]
    table = pq.read_table(window.path).to_pandas()
    assert window.rows == len(table) == len(kept) + 1  # the unlabelled one is newer than the window's start
    assert set(table["event_id"]) == {*kept["event_id"], "unlabelled"}
    assert window.undecodable == 1
    in_window = kept[kept["event_time"] >= window.start]
    assert window.frauds == int(in_window["is_fraud"].sum())
    # Arrival order survives per user (each user's events live in one partition, in the order sent).
    for _, group in table.groupby("user_id"):
        sent = [
            *kept[kept["event_id"].isin(group["event_id"])]["event_id"],
            *(["unlabelled"] * ("unlabelled" in set(group["event_id"]))),
        ]
        assert group["event_id"].tolist() == sent


def test_nothing_recent_is_a_clear_error(settings: Settings, tmp_path: Path) -> None:
    s = _settings(settings, window_h=1.0, warmup_h=0.0)
    config = GeneratorConfig(events=10, rate=1.0, seed=1, start=datetime.now(tz=UTC) - timedelta(hours=1))
    produce_to_kafka(config, s)
    with pytest.raises(WindowError, match="no transactions"):
        export_window(s, tmp_path / "w.parquet", now_s=time.time() + 7200)  # all of it older than 1 h of wall time


def test_a_window_many_times_the_buffer_spills_to_disk_and_comes_out_the_same(
    settings: Settings, tmp_path: Path
) -> None:
    s = _settings(settings, window_h=3.0, warmup_h=1.0)
    config = GeneratorConfig(events=4000, rate=0.3, seed=6)
    config = replace(config, start=start_ending_by(config, datetime.now(tz=UTC) - timedelta(minutes=1)))
    produce_to_kafka(config, s)
    producer = Producer(s.kafka)
    producer.send(s.topics.transactions, b"not avro", key="u1")
    producer.flush()

    spilled = export_window(_buffer(s, 200), tmp_path / "spilled.parquet")
    held = export_window(_buffer(s, 1_000_000), tmp_path / "held.parquet")

    # 200 rows at most in memory: the read spilled at least once per 200 rows (the last spill may be short).
    assert spilled.spills >= spilled.rows // 200 > 10
    assert held.spills == 1
    assert replace(spilled, path=held.path, spills=1) == held
    spilled_table, held_table = pq.read_table(spilled.path), pq.read_table(held.path)
    assert spilled_table.schema == held_table.schema == ARROW_SCHEMA
    assert spilled_table.equals(held_table)
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".parquet"]  # the spill directories are gone
    # And both are what was sent: the generator's rows from the warm-up's start, each partition in order.
    expected = generate_frame(config)
    kept = expected[expected["event_time"] >= spilled.warmup_start]
    table = spilled_table.to_pandas()
    assert len(table) == spilled.rows == len(kept)
    assert sorted(table["event_id"]) == sorted(kept["event_id"])
    for _, group in table.groupby("user_id"):
        assert group["event_id"].tolist() == kept[kept["event_id"].isin(group["event_id"])]["event_id"].tolist()
    in_window = kept[kept["event_time"] >= spilled.start]
    assert (spilled.labelled, spilled.frauds) == (len(in_window), int(in_window["is_fraud"].sum()))
    assert spilled.undecodable == 1
