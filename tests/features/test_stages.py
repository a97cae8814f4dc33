"""The stages without a stream framework: what the re-keyed stage evicts when its sources progress unevenly,
and what the ingest stage refuses (misrouted events, bad ids and amounts) or waits for (the schema registry)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from streamscore.features.forward import FORMAT_HEADER, encode_batch
from streamscore.features.plan import compile_view
from streamscore.features.rules import EventRules
from streamscore.features.stages import (
    SOURCE_HEADER,
    SOURCE_ID_HEADER,
    SOURCE_OFFSET,
    TIME,
    WRONG_PARTITION,
    IngestStage,
    InRecord,
    PartitionState,
    RekeyStage,
)
from streamscore.kafka.partitioner import partitions_of
from streamscore.serde import Serde, SerdeError
from tests.conftest import free_port

HOUR = 3_600_000
DAY = 24 * HOUR


def _stage() -> RekeyStage:
    count = SimpleNamespace(
        column="amount",
        function="count",
        time_window=timedelta(hours=24),
        slide_interval=timedelta(minutes=1),
        name="merchant_count_24h",
    )
    return RekeyStage([compile_view("merchant", "merchant_id", [count], [])], entity_key="merchant_id")


class _Topic:
    """The re-keyed partition: forwarded batches from several source partitions, in arrival order."""

    def __init__(self) -> None:
        self.offset = 0
        self.source_offsets: dict[int, int] = {}

    def forward(self, source: int, merchants: list[str], times: list[int], topic_id: bytes = b"id") -> InRecord:
        first = self.source_offsets.get(source, 0)
        self.source_offsets[source] = first + len(merchants)
        batch = {
            "merchant_id": pa.array(merchants, pa.string()),
            TIME: pa.array(times, pa.int64()),
            SOURCE_OFFSET: pa.array(np.arange(first, first + len(merchants)), pa.int64()),
            "amount": pa.array([1.0] * len(merchants), pa.float64()),
        }
        headers = [FORMAT_HEADER, (SOURCE_HEADER, str(source).encode()), (SOURCE_ID_HEADER, topic_id)]
        rec = InRecord("by-merchant", 0, self.offset, b"", encode_batch(batch), headers)
        self.offset += 1
        return rec


def _count(state: PartitionState, merchant: str) -> float:
    view = state.views["merchant"]
    return float(view.read(view.entity_rows([merchant]))[0, 0])


def test_a_lagging_source_holds_eviction_back_so_its_events_still_count() -> None:
    stage, topic = _stage(), _Topic()
    state = stage.new_state()
    t0 = 100 * DAY
    # Both sources sell at merchant m; source 0 then races two days ahead (m is not among its merchants any
    # more) while source 1, behind on a backlog, still has m's events of the first day to forward.
    stage.process(state, [topic.forward(0, ["m"], [t0]), topic.forward(1, ["m"], [t0 + HOUR])])
    stage.process(state, [topic.forward(0, ["other"], [t0 + 2 * DAY])])
    assert state.watermark_ms == t0 + 2 * DAY
    assert state.eviction_clock_ms == t0 + HOUR  # the slowest source
    state.views["merchant"].take_dirty()  # as a checkpoint round does: only saved entities may go
    assert state.evict_idle(stage.horizon_ms, 0) == {"merchant": []}
    out = stage.process(state, [topic.forward(1, ["m", "m"], [t0 + 2 * HOUR, t0 + 3 * HOUR])])
    assert not out.dead
    assert _count(state, "m") == 4
    # Once the lagging source has caught up, m is idle by every source's clock and goes.
    stage.process(state, [topic.forward(1, ["other"], [t0 + 2 * DAY])])
    state.views["merchant"].take_dirty()
    assert state.evict_idle(stage.horizon_ms, 0) == {"merchant": ["m"]}


def test_a_recreated_source_topic_forgets_its_old_clock() -> None:
    stage, topic = _stage(), _Topic()
    state = stage.new_state()
    stage.process(state, [topic.forward(0, ["m"], [DAY]), topic.forward(1, ["n"], [5 * DAY])])
    assert state.eviction_clock_ms == DAY
    topic.source_offsets[0] = 0  # the new topic's offsets start over
    stage.process(state, [topic.forward(0, ["m"], [5 * DAY], topic_id=b"new-id")])
    assert state.eviction_clock_ms == 5 * DAY


# --- the ingest stage: what it refuses, and what it waits for -------------------------------------------------


def _ingest(serde: Serde, partitions: int = 4) -> IngestStage:
    count = SimpleNamespace(
        column="amount", function="count", time_window=timedelta(hours=1), slide_interval=timedelta(minutes=1),
        name="user_count_1h",
    )  # fmt: skip
    plans = [compile_view("user", "user_id", [count], [])]
    stage = IngestStage(plans, EventRules(0, 60_000, 300_000), serde)
    stage.partitions = partitions
    return stage


def _transaction(user: str, i: int, t: datetime) -> dict[str, object]:
    return {
        "event_id": f"e-{i}", "user_id": user, "merchant_id": "m-1", "amount": 10.0 + i, "currency": "EUR",
        "country": "DE", "channel": "POS", "event_time": t,
    }  # fmt: skip


def _records(serde: Serde, transactions: list[dict[str, object]], partition: int | None = None) -> list[InRecord]:
    return [
        InRecord(
            "tx",
            int(partitions_of([str(t["user_id"])], 4)[0]) if partition is None else partition,
            offset,
            None,
            serde.encode(t),
            [],
        )
        for offset, t in enumerate(transactions)
    ]


def test_events_in_a_partition_their_user_does_not_hash_to_are_dead_lettered() -> None:
    serde = Serde("transaction")
    stage = _ingest(serde)
    state = stage.new_state()
    now = datetime.now(tz=UTC)
    right = _records(serde, [_transaction("u-1", i, now) for i in range(3)])
    home = right[0].partition
    wrong = _records(serde, [_transaction("u-2", 9, now)], partition=home)[0]
    assert int(partitions_of(["u-2"], 4)[0]) != home  # the test's premise: u-2 lives elsewhere
    out = stage.process(state, [*right, wrong._replace(offset=3)])
    assert [(r.offset, reason) for r, reason, _ in out.dead] == [(3, WRONG_PARTITION)]
    assert out.applied == 3
    assert list(state.views["user"].rows) == ["u-1"]


def test_ids_with_control_characters_or_too_long_and_huge_amounts_are_refused() -> None:
    serde = Serde("transaction")
    stage = _ingest(serde, partitions=0)
    now = datetime.now(tz=UTC)
    bad = [
        _transaction("a\0b", 0, now),
        _transaction("u" * 129, 1, now),
        dict(_transaction("u-1", 2, now), amount=1e12),
        dict(_transaction("u-1", 3, now), merchant_id="m\n1"),
    ]
    out = stage.process(stage.new_state(), _records(serde, bad, partition=0))
    assert [reason for _, reason, _ in out.dead] == [
        "user-id-control-character", "user-id-too-long", "amount-too-large", "merchant-id-control-character",
    ]  # fmt: skip
    assert out.applied == 0


def test_a_registry_outage_changes_nothing_and_the_same_records_apply_once_it_is_back() -> None:
    registry = f"mock://stages-{uuid.uuid4().hex}"
    writer = Serde("transaction", registry_url=registry, subject="tx-value")
    now = datetime.now(tz=UTC)
    records = _records(writer, [_transaction("u-1", i, now) for i in range(5)], partition=0)
    down = Serde("transaction", registry_url=f"http://127.0.0.1:{free_port()}", subject="tx-value")
    stage = _ingest(down, partitions=0)
    state = stage.new_state()
    with pytest.raises(SerdeError) as raised:
        stage.process(state, records)
    assert raised.value.reason == "registry"
    assert state.next_offset == 0
    assert len(state.views["user"]) == 0
    stage.serde = Serde("transaction", registry_url=registry, subject="tx-value")
    out = stage.process(state, records)
    assert out.applied == 5
    assert not out.dead
    assert state.next_offset == 5
