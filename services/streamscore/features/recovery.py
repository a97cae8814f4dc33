"""Recovering a partition's state when the processor takes it over: restored, rebuilt or fresh, never silent.

The state must cover exactly the consumer group's committed offset of that input topic (by topic id), and
have been computed with the current definitions (``fingerprint``). The state topic's newest checkpoint is
checked against all three. When it does not match (no state, an older checkpoint, changed definitions, a
recreated topic) the state is *rebuilt*: the input partition is replayed from the offset whose timestamp is
``watermark - longest window - allowed lateness - idle margin`` (``offsets_for_times``), up to the committed
offset, with every output dropped, since it was all written before. Events after that point that reach
further back than the replay did are dead-lettered, not miscounted (``PartitionState.floor_all_ms``).

The replay relies on record timestamps being no earlier than their event time minus ``max_future`` (true
for producer CreateTime set at or after the event, and for LogAppendTime). A replay that would need records
the topic no longer keeps stops the processor with :class:`StateRecoveryError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import confluent_kafka
import numpy as np
from confluent_kafka import TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import Counter, Gauge

from streamscore.errors import StreamscoreError
from streamscore.features.changelog import Restored, StateLog, new_epoch
from streamscore.features.plan import ViewPlan
from streamscore.features.stages import NO_TIME, InRecord, OnlineRows, PartitionState, StageOutput, online_rows
from streamscore.features.state import ViewState
from streamscore.kafka import admin_config, consumer_config, take_ready
from streamscore.serde import SerdeError
from streamscore.settings import Settings

__all__ = ["Recovered", "Recovery", "StateRecoveryError", "fingerprint"]

log = logging.getLogger(__name__)

RECOVERIES = Counter(
    "streamscore_features_recoveries",
    "Partitions taken over, by how their state was obtained (restored, rebuilt, fresh)",
    ["stage", "outcome"],
)
REPLAYED = Counter("streamscore_features_replayed_events", "Input messages replayed to rebuild state", ["stage"])
REBUILDING = Gauge(
    "streamscore_features_rebuilding", "1 while a partition's state is being rebuilt", ["stage", "partition"]
)
_STALL_S = 60.0
_ESTIMATE_FROM = 200  # messages before the committed offset read to estimate the partition's watermark


class StateRecoveryError(StreamscoreError):
    """A partition's state cannot be recovered exactly from what Kafka still keeps."""


class Stage(Protocol):
    name: str

    @property
    def plans(self) -> Sequence[ViewPlan]: ...

    @property
    def horizon_ms(self) -> int: ...

    def new_state(self) -> PartitionState: ...

    def process(self, state: PartitionState, records: Sequence[InRecord], now_ms: int | None = None) -> StageOutput: ...

    def event_times(self, rec: InRecord) -> list[int]: ...


def fingerprint(plans: Sequence[ViewPlan], allowed_lag_ms: int) -> str:
    """Identifies the definitions a state was computed with: the plans and the lateness rule."""
    text = json.dumps([repr(p) for p in sorted(plans, key=lambda p: p.name)] + [allowed_lag_ms])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Recovered:
    state: PartitionState
    outcome: str  # restored | rebuilt | fresh
    reason: str
    replayed: int = 0
    stale: dict[str, set[str]] = field(default_factory=dict)
    rewrite: dict[str, OnlineRows] = field(default_factory=dict)  # rebuilt entities to write online
    backlog: tuple[int, int] | None = None  # input offsets to process (with outputs) before the group's


class Recovery:
    """Recovers partitions of one stage whose input is ``topic``."""

    def __init__(
        self,
        settings: Settings,
        stage: Stage,
        topic: str,
        state_log: StateLog,
        *,
        allowed_lag_ms: int,
    ) -> None:
        self.settings = settings
        self.stage = stage
        self.topic = topic
        self.state_log = state_log
        self.allowed_lag_ms = allowed_lag_ms
        self.fingerprint = fingerprint(stage.plans, allowed_lag_ms)
        self._topic_id: str | None = None

    @property
    def topic_id(self) -> str:
        if self._topic_id is None:
            self._topic_id = str(self._describe().topic_id)
        return self._topic_id

    def partition_count(self) -> int:
        """The input topic's partitions now (asked anew: a topic can gain partitions)."""
        return len(self._describe().partitions)

    def _describe(self) -> Any:
        admin = AdminClient(admin_config(self.settings.kafka))
        futures = admin.describe_topics(TopicCollection([self.topic]), request_timeout=30)
        return futures[self.topic].result()

    def recover(self, partition: int) -> Recovered:
        tag = f"{self.stage.name}[{partition}]"
        consumer = confluent_kafka.Consumer(
            consumer_config(self.settings.kafka, self.settings.features.group_id, client_suffix="state-recovery")
        )
        try:
            tp = TopicPartition(self.topic, partition)
            committed = consumer.committed([tp], timeout=30)[0].offset
            low, high = consumer.get_watermark_offsets(tp, timeout=30)
            restored = self.state_log.read(partition, self.stage.plans)
            found = restored.checkpoint
            if (committed >= 0 and found is not None and found.topic_id != self.topic_id) or committed > high:
                # Offsets are committed only after a checkpoint of the same topic: this commit was made on an
                # earlier topic of that name, deleted and recreated since. Its records are all new.
                state = self.stage.new_state()
                state.epoch, state.next_offset = new_epoch(), low
                reason = (
                    f"the committed offset {committed} belongs to an earlier topic of that name: reading this one"
                    f" from offset {low}"
                )
                log.warning("%s: %s", tag, reason)
                backlog = (low, min(committed, high))
                return self._done(Recovered(state, "fresh", reason, stale=restored.stale, backlog=backlog), tag)
            if committed < 0:
                state = self.stage.new_state()
                state.epoch = new_epoch()
                reason = "the group has no committed offset here: starting at the earliest record"
                if found is not None:
                    reason += "; the state found was made for another incarnation of the topic and is ignored"
                    log.warning("%s: %s", tag, reason)
                if low > 0:
                    log.warning(
                        "%s: records before offset %d are gone: windows reaching before them are partial for one "
                        "horizon (%.0f h)", tag, low, self.stage.horizon_ms / 3_600_000,
                    )  # fmt: skip
                return self._done(Recovered(state, "fresh", reason, stale=restored.stale), tag)
            problem = self._problem(restored, committed, high)
            if problem is None:
                assert found is not None
                assert restored.views is not None
                state = PartitionState(
                    restored.views,
                    next_offset=found.next_offset,
                    source_high=dict(found.source_high),
                    source_ids=dict(found.source_ids),
                    source_watermarks=dict(found.source_watermarks),
                    watermark_ms=found.watermark_ms,
                    floor_all_ms=found.floor_all_ms,
                    floor_new_ms=found.floor_new_ms,
                    epoch=found.epoch,
                )
                entities = sum(len(v) for v in state.views.values())
                reason = f"{entities:,} entities from {restored.records:,} state records"
                return self._done(Recovered(state, "restored", reason, stale=restored.stale), tag)
            log.warning("%s: rebuilding the state from %s: %s", tag, self.topic, problem)
            REBUILDING.labels(self.stage.name, str(partition)).set(1)
            try:
                state, replayed = self._rebuild(consumer, partition, committed, low, restored)
            finally:
                REBUILDING.labels(self.stage.name, str(partition)).set(0)
            rewrite = {name: _exact_rows(view, state.floor_all_ms) for name, view in state.views.items()}
            return self._done(Recovered(state, "rebuilt", problem, replayed, restored.stale, rewrite), tag)
        finally:
            consumer.close()

    def read(self, partition: int, start: int, end: int) -> Iterator[list[InRecord]]:
        """Input records ``[start, end)`` of a partition, in batches."""
        consumer = confluent_kafka.Consumer(
            consumer_config(self.settings.kafka, self.settings.features.group_id, client_suffix="state-recovery")
        )
        try:
            yield from _read(consumer, self.topic, partition, start, end, size=self.settings.features.batch_size)
        finally:
            consumer.close()

    def _done(self, recovered: Recovered, tag: str) -> Recovered:
        RECOVERIES.labels(self.stage.name, recovered.outcome).inc()
        level = logging.WARNING if recovered.outcome == "rebuilt" else logging.INFO
        extra = f", {recovered.replayed:,} messages replayed" if recovered.outcome == "rebuilt" else ""
        log.log(level, "%s: state %s (%s%s)", tag, recovered.outcome, recovered.reason, extra)
        return recovered

    def _problem(self, restored: Restored, committed: int, high: int) -> str | None:
        """Why the restored state cannot be used, or None if it covers the committed offset exactly."""
        found = restored.checkpoint
        if found is None:
            return "no state in Kafka for it"
        if found.fingerprint != self.fingerprint:
            return "the feature definitions changed since the state was computed"
        if restored.views is None:
            return "the state's rows cannot be read with this version"
        if found.next_offset < committed:
            return f"the state covers offset {found.next_offset} but the group committed {committed}"
        if found.next_offset > high:
            return f"the state covers offset {found.next_offset}, past the end of the topic ({high})"
        return None

    def _rebuild(
        self, consumer: confluent_kafka.Consumer, partition: int, committed: int, low: int, restored: Restored
    ) -> tuple[PartitionState, int]:
        rules = self.settings.features
        margin_ms = round(rules.idle_margin_s * 1000)
        max_future_ms = round(rules.max_future_s * 1000)
        watermark = self._watermark_estimate(consumer, partition, committed, low, restored)
        state = self.stage.new_state()
        state.epoch = new_epoch()
        if watermark == NO_TIME:
            start, complete_from = low, NO_TIME  # nothing decodable to estimate from: replay everything kept
        else:
            complete_from = watermark - self.stage.horizon_ms - self.allowed_lag_ms - margin_ms
            found = consumer.offsets_for_times(
                [TopicPartition(self.topic, partition, max(0, complete_from - max_future_ms))], timeout=30
            )[0].offset
            start = committed if found < 0 else min(found, committed)
        if start <= low and low > 0:
            raise StateRecoveryError(
                f"cannot rebuild {self.stage.name} state of {self.topic}[{partition}]: the replay must start before"
                f" offset {low}, the oldest record the topic still keeps; raise the topic's retention.ms above the"
                " longest window plus lateness and idle margin, or reset the group and backfill the online store"
            )
        replayed = self._replay(consumer, partition, start, committed, state)
        if complete_from != NO_TIME:
            state.floor_all_ms = max(
                (complete_from // v.plan.slide_ms + v.plan.n_tiles) * v.plan.slide_ms for v in state.views.values()
            )
        state.next_offset = committed
        return state, replayed

    def _watermark_estimate(
        self, consumer: confluent_kafka.Consumer, partition: int, committed: int, low: int, restored: Restored
    ) -> int:
        """A lower bound of the partition's newest event time at the committed offset: the newest event time
        of the last messages before it (and of an older checkpoint of the same topic, if any)."""
        times: list[int] = []
        found = restored.checkpoint
        if found is not None and found.topic_id == self.topic_id and found.next_offset <= committed:
            times.append(found.watermark_ms)
        start = max(low, committed - _ESTIMATE_FROM)
        for batch in _read(consumer, self.topic, partition, start, committed):
            for rec in batch:
                times.extend(self.stage.event_times(rec))
        return max(times, default=NO_TIME)

    def _replay(
        self, consumer: confluent_kafka.Consumer, partition: int, start: int, end: int, state: PartitionState
    ) -> int:
        count = 0
        for batch in _read(consumer, self.topic, partition, start, end, size=self.settings.features.batch_size):
            delay = 0.1
            while True:
                try:
                    self.stage.process(state, batch)  # outputs were all written when these events first came
                    break
                except SerdeError as exc:  # the registry is down: the batch is untouched, wait for it
                    if exc.reason != "registry":
                        raise
                    log.warning(
                        "replay of %s[%d]: schema registry unreachable, retrying in %.1fs", self.topic, partition, delay
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
            count += len(batch)
            REPLAYED.labels(self.stage.name).inc(len(batch))
        return count


def _exact_rows(view: ViewState, floor_ms: int) -> OnlineRows:
    """Entities whose windows the rebuild covers completely: newest event at or after the floor."""
    rows = np.array([r for r in view.rows.values() if view.max_t[r] >= floor_ms], np.int64)
    return online_rows(view, rows)


def _read(
    consumer: confluent_kafka.Consumer, topic: str, partition: int, start: int, end: int, *, size: int = 5000
) -> Iterator[list[InRecord]]:
    """Messages ``[start, end)`` of one partition, in batches."""
    if start >= end:
        return
    consumer.assign([TopicPartition(topic, partition, start)])
    position, idle_since = start, time.monotonic()
    try:
        while position < end:
            msgs = [m for m in take_ready(consumer, size, 1.0) if m.error() is None]
            if not msgs:
                if time.monotonic() - idle_since > _STALL_S:
                    raise StateRecoveryError(f"reading {topic}[{partition}] to rebuild state stalled at {position}")
                continue
            idle_since = time.monotonic()
            position = max(m.offset() or 0 for m in msgs) + 1
            batch = [InRecord.of(m) for m in msgs if (m.offset() or 0) < end]
            if batch:
                yield batch
    finally:
        consumer.unassign()
