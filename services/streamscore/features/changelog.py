"""A stage's window state kept in Kafka: a compacted topic per stage, partitioned like the stage's input.

Why a changelog of changed rows rather than chunked snapshots: with a million cards, a few thousand change
between two checkpoints, so a checkpoint costs what changed, never the whole state, and no record comes near
the broker's message size limit (an entity's row is its non-empty tiles: tens of bytes to ~60 KB). Kafka's
compaction keeps the newest row per entity, so the topic stays the size of the live state.

Records of partition ``p`` of ``<features_state>-<stage>`` (all with header ``streamscore.epoch``):

- key ``<view>/<entity id>``: the entity's packed row (:meth:`ViewState.pack`); null (a tombstone) once the
  entity is evicted;
- key ``\\0checkpoint``: a JSON :class:`Checkpoint`, written after the rows of its round.

A round writes the changed rows, then the checkpoint, then the tombstones of evicted entities; the input
offsets are committed only once all of it is acknowledged. A restore reads the partition from its start and
keeps the newest checkpoint and, of its epoch, the newest row of every key. Rows may be newer than the
checkpoint (a round that did not finish): a row records the input offset it has applied, and the stage
skips events at or below it, so such a row is never counted twice. The epoch changes whenever the state is
rebuilt from scratch, so rows of an abandoned state are never mixed into a new one.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import confluent_kafka
from confluent_kafka import TopicPartition

from streamscore.errors import KafkaUnavailable
from streamscore.features.plan import ViewPlan
from streamscore.features.stages import NO_TIME, PartitionState
from streamscore.features.state import ViewState
from streamscore.kafka import Producer, consumer_config, message_headers, take_ready
from streamscore.settings import KafkaSettings

__all__ = ["CHECKPOINT_KEY", "Checkpoint", "Restored", "StateLog", "new_epoch"]

log = logging.getLogger(__name__)

CHECKPOINT_KEY = b"\x00checkpoint"
EPOCH_HEADER = "streamscore.epoch"
_FORMAT = 1
_STALL_S = 60.0


def new_epoch() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Checkpoint:
    """What a round's rows cover: the next input offset of that input topic (by id, so a recreated topic
    is recognised), computed by which definitions (``fingerprint``), and where the state's exactness ends."""

    epoch: str
    topic_id: str
    fingerprint: str
    next_offset: int
    watermark_ms: int = NO_TIME
    floor_all_ms: int = NO_TIME
    floor_new_ms: int = NO_TIME
    source_high: dict[int, int] = field(default_factory=dict)
    source_ids: dict[int, str] = field(default_factory=dict)
    source_watermarks: dict[int, int] = field(default_factory=dict)
    format: int = _FORMAT

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint | None:
        """None for a record of another format or one that does not parse (never fatal: it means rebuild)."""
        try:
            raw = json.loads(data)
            if raw.get("format") != _FORMAT:
                return None
            raw["source_high"] = {int(k): int(v) for k, v in raw.get("source_high", {}).items()}
            raw["source_ids"] = {int(k): str(v) for k, v in raw.get("source_ids", {}).items()}
            raw["source_watermarks"] = {int(k): int(v) for k, v in raw.get("source_watermarks", {}).items()}
            return cls(**raw)
        except (ValueError, TypeError, AttributeError):
            return None


@dataclass
class Restored:
    """What a partition of the state topic holds."""

    checkpoint: Checkpoint | None
    views: dict[str, ViewState] | None  # of the checkpoint's epoch; None if unreadable or absent
    stale: dict[str, set[str]]  # entity ids per view of other epochs: tombstoned by the next round
    records: int = 0


class StateLog:
    """Writes rounds of one stage's state and reads a partition of it back."""

    def __init__(self, kafka: KafkaSettings, producer: Producer, topic: str, *, group_id: str) -> None:
        self.kafka = kafka
        self.producer = producer
        self.topic = topic
        self.group_id = group_id

    def write(
        self,
        partition: int,
        state: PartitionState,
        *,
        topic_id: str,
        fingerprint: str,
        tombstones: Mapping[str, Sequence[str]],
    ) -> tuple[int, int]:
        """Send one round (changed rows, checkpoint, tombstones) without waiting for acknowledgements; the
        caller flushes the producer before committing offsets. Returns (rows, bytes) sent."""
        headers = [(EPOCH_HEADER, state.epoch.encode())]
        send = self.producer.send
        rows = size = 0
        for name, view in state.views.items():
            ids, blobs = view.take_dirty()
            for entity, blob in zip(ids, blobs, strict=True):
                send(self.topic, blob, key=f"{name}/{entity}".encode(), headers=headers, partition=partition)
                size += len(blob)
            rows += len(ids)
        checkpoint = Checkpoint(
            epoch=state.epoch,
            topic_id=topic_id,
            fingerprint=fingerprint,
            next_offset=state.next_offset,
            watermark_ms=state.watermark_ms,
            floor_all_ms=state.floor_all_ms,
            floor_new_ms=state.floor_new_ms,
            source_high=dict(state.source_high),
            source_ids=dict(state.source_ids),
            source_watermarks=dict(state.source_watermarks),
        ).to_bytes()
        send(self.topic, checkpoint, key=CHECKPOINT_KEY, headers=headers, partition=partition)
        size += len(checkpoint)
        for name, gone in tombstones.items():
            for entity in gone:
                send(self.topic, None, key=f"{name}/{entity}".encode(), headers=headers, partition=partition)
        return rows, size

    def read(self, partition: int, plans: Sequence[ViewPlan]) -> Restored:
        """The newest checkpoint of the partition and the rows of its epoch, as view states."""
        by_name = {p.name: p for p in plans}
        states: dict[str, dict[str, ViewState]] = defaultdict(dict)
        bad: set[str] = set()
        checkpoint: Checkpoint | None = None
        records = 0
        for batch in self._batches(partition):
            pending: dict[tuple[str, str], dict[str, bytes | None]] = defaultdict(dict)
            for msg in batch:
                records += 1
                key = msg.key() or b""
                epoch = _epoch_of(msg)
                if key == CHECKPOINT_KEY:
                    checkpoint = Checkpoint.from_bytes(msg.value() or b"")
                    continue
                view, _, entity = key.decode(errors="replace").partition("/")
                if view in by_name and epoch not in bad:
                    pending[(epoch, view)][entity] = msg.value()
            for (epoch, view), latest in pending.items():
                state = states[epoch].get(view)
                if state is None:
                    state = states[epoch][view] = ViewState(by_name[view])
                state.remove([e for e, blob in latest.items() if blob is None])
                kept = [(e, blob) for e, blob in latest.items() if blob is not None]
                try:
                    state.restore([e for e, _ in kept], [blob for _, blob in kept])
                except ValueError as exc:  # rows of another layout: that epoch cannot be used
                    log.warning("%s[%d]: rows of epoch %s are unreadable (%s)", self.topic, partition, epoch, exc)
                    bad.add(epoch)
        chosen = None if checkpoint is None or checkpoint.epoch in bad else checkpoint.epoch
        views = None
        if chosen is not None:
            views = {name: states[chosen].get(name) or ViewState(plan) for name, plan in by_name.items()}
        stale: dict[str, set[str]] = defaultdict(set)
        for epoch, by_view in states.items():
            if epoch != chosen:
                for name, state in by_view.items():
                    stale[name].update(k for k in state.rows if views is None or k not in views[name].rows)
        return Restored(checkpoint, views, dict(stale), records)

    def _batches(self, partition: int) -> Iterator[list[confluent_kafka.Message]]:
        """The partition from its first to its last record (as of the start of the read)."""
        consumer = confluent_kafka.Consumer(
            consumer_config(self.kafka, f"{self.group_id}-restore", client_suffix="state-restore")
        )
        try:
            tp = TopicPartition(self.topic, partition)
            low, high = consumer.get_watermark_offsets(tp, timeout=30)
            if high <= low:
                return
            consumer.assign([TopicPartition(self.topic, partition, low)])
            position, idle_since = low, time.monotonic()
            while position < high:
                batch = [m for m in take_ready(consumer, 10_000, 1.0) if m.error() is None]
                if batch:
                    position, idle_since = max(m.offset() or 0 for m in batch) + 1, time.monotonic()
                    yield batch
                elif time.monotonic() - idle_since > _STALL_S:
                    raise KafkaUnavailable(
                        self.kafka.bootstrap_servers, f"reading {self.topic}[{partition}] stalled at offset {position}"
                    )
        finally:
            consumer.close()


def _epoch_of(msg: confluent_kafka.Message) -> str:
    return next((v.decode() for k, v in message_headers(msg) if k == EPOCH_HEADER), "")
