"""The stages without a stream framework: what the re-keyed stage evicts when its sources progress unevenly."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pyarrow as pa

from streamscore.features.forward import FORMAT_HEADER, encode_batch
from streamscore.features.plan import compile_view
from streamscore.features.stages import (
    SOURCE_HEADER,
    SOURCE_ID_HEADER,
    SOURCE_OFFSET,
    TIME,
    InRecord,
    PartitionState,
    RekeyStage,
)

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
