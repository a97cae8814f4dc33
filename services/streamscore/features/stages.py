"""The feature processor's two stages, independent of the stream framework that feeds them.

``transactions`` is keyed by user, so one partition holds all of a user's events and the user views can
be computed where they arrive. A merchant's events are spread over every partition, so the *ingest* stage
forwards the accepted events to ``transactions-by-merchant``, one columnar batch per target partition
(``forward.py``), and the *rekey* stage computes the merchant views there: each merchant again lives in
one partition and one process.

Acceptance (validation, duplicates, lateness) is decided once, at ingest, so the merchant views see the
same events the user views do. Each forwarded event carries its source offset; after a replay the rekey
stage drops the events at or below the highest offset it already applied from that source partition,
which removes exactly the replayed copies (one producer per source partition keeps them in order).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import confluent_kafka
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamscore.features import kernels
from streamscore.features.forward import FORMAT_HEADER, decode_batch, encode_batch, target_partitions
from streamscore.features.plan import ViewPlan
from streamscore.features.rules import EventRules
from streamscore.features.state import ViewState
from streamscore.kafka import Header
from streamscore.kafka.partitioner import Partitioner, partitions_of
from streamscore.serde import Serde, SerdeError
from streamscore.serde.columnar import ColumnarDecoder

__all__ = [
    "BEYOND_STATE",
    "WRONG_PARTITION",
    "InRecord",
    "IngestStage",
    "OnlineRows",
    "PartitionState",
    "RekeyStage",
    "StageOutput",
    "online_rows",
]

NO_TIME = int(kernels.NO_TIME)
BEYOND_STATE = "beyond-state-horizon"
WRONG_PARTITION = "wrong-partition"

SOURCE_HEADER = "streamscore.src.partition"
SOURCE_ID_HEADER = "streamscore.src.topic-id"  # a recreated source topic starts its offsets again
SOURCE_OFFSET = "_source_offset"
TIME = "_time_ms"


class InRecord(NamedTuple):
    """One consumed message (a NamedTuple: one is built per event, a dataclass costs twice as much)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[Header]

    @classmethod
    def of(cls, msg: confluent_kafka.Message) -> InRecord:
        """A consumed message (a consumer gives headers as a list of (str, bytes | None), or None)."""
        raw: list[tuple[str, bytes | None]] | None = msg.headers()  # type: ignore[assignment]  # stubs: any header
        headers = [(k, v or b"") for k, v in raw] if raw else []
        return cls(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key(), msg.value(), headers)


@dataclass
class OnlineRows:
    ids: list[str]
    values: np.ndarray  # [rows, features] float64, NaN = null
    event_ms: np.ndarray  # int64


@dataclass
class StageOutput:
    dead: list[tuple[InRecord, str, BaseException | None]] = field(default_factory=list)
    # (topic, key, value, headers, partition)
    forwards: list[tuple[str, bytes, bytes, list[Header], int]] = field(default_factory=list)
    online: dict[str, OnlineRows] = field(default_factory=dict)
    applied: int = 0
    event_ms: list[int] = field(default_factory=list)  # of applied events, for freshness


@dataclass
class PartitionState:
    """Everything a partition's processing depends on; a checkpoint of it is a recovery point.

    The floors say where a recovered state stops being exact. After a rebuild from a replay of the recent
    past, events older than ``floor_all_ms`` would need windows the replay did not reach; after evicting
    idle entities, an entity that is not in the state could be one of them, so its events older than
    ``floor_new_ms`` would need the evicted tiles. Such events are dead-lettered (``beyond-state-horizon``)
    rather than counted into a wrong window.
    """

    views: dict[str, ViewState]
    next_offset: int = 0
    source_high: dict[int, int] = field(default_factory=dict)  # rekey: source partition -> offset applied
    source_ids: dict[int, str] = field(default_factory=dict)  # rekey: source partition -> its topic's id
    # rekey: source partition -> newest event time forwarded from it (see ``eviction_clock_ms``)
    source_watermarks: dict[int, int] = field(default_factory=dict)
    watermark_ms: int = NO_TIME  # newest event time applied in this partition
    floor_all_ms: int = NO_TIME
    floor_new_ms: int = NO_TIME
    epoch: str = ""  # the incarnation of this state: a rebuild starts a new one (changelog.py)

    def advance_watermark(self, times: np.ndarray) -> None:
        if len(times):
            self.watermark_ms = max(self.watermark_ms, int(times.max()))

    @property
    def eviction_clock_ms(self) -> int:
        """The time eviction measures idleness against. A re-keyed partition merges the forwards of every
        source partition, and the sources progress unevenly (one catching up on a backlog, one consumed
        before another): its own newest event can be hours ahead of what a lagging source will still
        forward. So it is the slowest source's newest event; elsewhere, the partition's watermark. A source
        that stops forwarding holds eviction back (memory grows; nothing is lost)."""
        if self.source_watermarks:
            return min(self.source_watermarks.values())
        return self.watermark_ms

    def evict_idle(self, horizon_ms: int, idle_ms: int) -> dict[str, list[str]]:
        """Drop entities whose newest event is more than ``horizon_ms + idle_ms`` behind the eviction clock
        (and unchanged since the last checkpoint), and raise ``floor_new_ms`` past their tiles.

        Every view of a stage sees the same events per entity, so they evict the same entities."""
        clock = self.eviction_clock_ms
        if clock == NO_TIME:
            return {}
        cutoff = clock - horizon_ms - idle_ms
        evicted = {name: view.evict(cutoff) for name, view in self.views.items()}
        if any(evicted.values()):
            self.floor_new_ms = max(
                self.floor_new_ms,
                *((cutoff // v.plan.slide_ms + v.plan.n_tiles) * v.plan.slide_ms for v in self.views.values()),
            )
        return evicted


def _beyond_floors(
    state: PartitionState, view: ViewState, keys: Sequence[str], times: np.ndarray, idx: np.ndarray
) -> np.ndarray:
    """Mask over ``idx``: events the recovered state cannot count exactly (see :class:`PartitionState`).
    Must run before the entities are added to ``view``."""
    beyond = times[idx] < state.floor_all_ms
    if len(idx) and int(times[idx].min()) < state.floor_new_ms:
        unknown = np.fromiter((keys[i] not in view.rows for i in idx.tolist()), np.bool_, len(idx))
        beyond |= unknown & (times[idx] < state.floor_new_ms)
    return np.asarray(beyond, np.bool_)


def online_rows(state: ViewState, rows: np.ndarray) -> OnlineRows:
    """The current feature values of ``rows`` (each once), as the online store takes them."""
    changed = np.unique(rows)
    return OnlineRows([state.ids[r] or "" for r in changed.tolist()], state.read(changed), state.max_t[changed])


class IngestStage:
    """Decode, validate, de-duplicate and gate transactions; compute the views keyed by the topic's key."""

    name = "features-ingest"

    def __init__(
        self,
        plans: Sequence[ViewPlan],
        rules: EventRules,
        serde: Serde,
        *,
        partition_key: str = "user_id",
        forwards: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        self.plans = [p for p in plans if p.entity_key == partition_key]
        if not self.plans:
            raise ValueError(f"no feature view is keyed by {partition_key!r}, the key of the source topic")
        self.rules = rules
        self.decoder = ColumnarDecoder(serde)
        self.partition_key = partition_key
        self.source_id = ""  # the source topic's id, sent with forwarded events (set by the processor)
        # The source topic's partition count and its producers' partitioner (set by the processor; 0: unchecked).
        self.partitions = 0
        self.partitioner: Partitioner = "crc32"
        # entity key -> (topic, partitions, columns its views read)
        self.forwards = {
            key: (topic, n, _columns_for([p for p in plans if p.entity_key == key]))
            for key, (topic, n) in (forwards or {}).items()
        }

    @property
    def serde(self) -> Serde:
        return self.decoder.serde

    @serde.setter
    def serde(self, serde: Serde) -> None:
        self.decoder = ColumnarDecoder(serde)

    def new_state(self) -> PartitionState:
        return PartitionState({p.name: ViewState(p) for p in self.plans})

    @property
    def horizon_ms(self) -> int:
        """How far back in event time this stage's state reaches (its longest ring)."""
        return max(p.horizon_ms for p in self.plans)

    def event_times(self, rec: InRecord) -> list[int]:
        """Event times a message carries (empty if it is not a valid transaction); recovery estimates a
        partition's watermark from them."""
        try:
            record = self.serde.decode(rec.value or b"")
        except SerdeError:
            return []
        value = record.get("event_time")
        return [_epoch_ms(value)] if isinstance(value, datetime) else []

    def _misrouted(self, keys: list[str], kept: list[InRecord], out: StageOutput) -> np.ndarray:
        """Mask of the events in a partition their entity does not hash to, dead-lettered (``wrong-partition``).

        The state of an entity lives where its events arrive; an event elsewhere (a producer keyed by
        something else, another partitioner, or a topic that gained partitions) would start a second, partial
        state for the same entity, and both would write the same online row, the last one winning."""
        expected = partitions_of(keys, self.partitions, self.partitioner)
        wrong = expected != np.fromiter((r.partition for r in kept), np.int64, len(kept))
        for i in np.flatnonzero(wrong).tolist():
            out.dead.append((kept[i], WRONG_PARTITION, None))
        return np.asarray(wrong, np.bool_)

    def _accepted(
        self, state: PartitionState, records: Sequence[InRecord], now_ms: int, out: StageOutput
    ) -> tuple[list[InRecord], pa.Table, list[str]]:
        """The records past the checkpoint that decode and pass the rules, with their columns and entity keys;
        the others are dead-lettered. A registry outage raises before the state changes."""
        fresh = [rec for rec in records if rec.offset >= state.next_offset]  # others: inside the checkpoint
        decoded = self.decoder.decode([rec.value or b"" for rec in fresh])
        if records:
            state.next_offset = max(state.next_offset, records[-1].offset + 1)
        for i, exc in decoded.errors:
            out.dead.append((fresh[i], f"undecodable-{exc.reason}", exc))
        table, positions = decoded.table, decoded.positions
        reasons = self.rules.invalid_reasons(table, now_ms)
        invalid = reasons.astype(bool)  # a reason, or None
        for j in np.flatnonzero(invalid).tolist():
            out.dead.append((fresh[positions[j]], reasons[j], None))
        kept = [fresh[i] for i in positions[~invalid].tolist()]
        if invalid.any():
            table = table.filter(pa.array(~invalid))
        keys: list[str] = table.column(self.partition_key).to_pylist()
        if self.partitions and kept:
            wrong = self._misrouted(keys, kept, out)
            if wrong.any():
                right = np.flatnonzero(~wrong).tolist()
                kept, keys = [kept[i] for i in right], [keys[i] for i in right]
                table = table.filter(pa.array(~wrong))
        return kept, table, keys

    def process(self, state: PartitionState, records: Sequence[InRecord], now_ms: int | None = None) -> StageOutput:
        """Raises the registry's ``SerdeError`` during a schema-registry outage, before changing the state."""
        out = StageOutput()
        now = int(time.time() * 1000) if now_ms is None else now_ms
        kept, table, keys = self._accepted(state, records, now, out)
        if not kept:
            return out

        lead = state.views[self.plans[0].name]
        times = np.asarray(pc.cast(table.column("event_time"), pa.int64()).to_numpy(), np.int64)
        offsets = np.fromiter((r.offset for r in kept), np.int64, len(kept))
        idx = np.arange(len(kept))
        beyond = _beyond_floors(state, lead, keys, times, idx)
        rows = lead.entity_rows(keys)
        # A restored row can hold events after its checkpoint's offset (rows are written before the
        # checkpoint record): those events are in it already, outputs included.
        idx = idx[(offsets > lead.applied[rows]) & ~beyond[idx]]
        for i in np.nonzero(beyond)[0].tolist():
            if offsets[i] > lead.applied[rows[i]]:
                out.dead.append((kept[i], BEYOND_STATE, None))

        ids = ViewState.value_ids(_strings(table, "event_id", idx))
        repeat = lead.dedup(rows[idx], ids, times[idx], self.rules.allowed_lag_ms)
        for i in idx[repeat].tolist():
            out.dead.append((kept[i], "duplicate", None))
        idx = idx[~repeat]
        late = lead.gate(rows[idx], times[idx], self.rules.allowed_lag_ms)
        for i in idx[late].tolist():
            out.dead.append((kept[i], "late", None))
        idx = idx[~late]
        if not len(idx):
            return out

        applied = idx
        for plan in self.plans:
            view = state.views[plan.name]
            vidx, vrows = idx, rows[idx]
            if view is not lead:
                vrows = view.entity_rows([keys[i] for i in idx.tolist()])
                fresh = offsets[idx] > view.applied[vrows]
                vidx, vrows = idx[fresh], vrows[fresh]
            values = _numeric(table, vidx, plan)
            distinct = view.value_ids(_strings(table, plan.distinct_column, vidx)) if plan.distinct_column else None
            status = view.apply(vrows, times[vidx], values, distinct, offsets[vidx])
            if view is lead:
                # Older than the entity's whole ring: it can count in no window, so it is late too.
                for i in vidx[status == kernels.DROPPED_OLD].tolist():
                    out.dead.append((kept[i], "late", None))
                applied = vidx[status == kernels.APPLIED]
            out.online[plan.name] = online_rows(view, vrows[status == kernels.APPLIED])
        state.advance_watermark(times[applied])
        out.applied = len(applied)
        out.event_ms = times[applied].tolist()
        if len(applied):
            self._forward(table.take(pa.array(applied)), times[applied], offsets[applied], kept[0].partition, out)
        return out

    def _forward(
        self, table: pa.Table, times: np.ndarray, offsets: np.ndarray, partition: int, out: StageOutput
    ) -> None:
        """The applied events, re-keyed: one columnar batch per target partition of each forward topic."""
        headers = [FORMAT_HEADER, (SOURCE_HEADER, str(partition).encode()), (SOURCE_ID_HEADER, self.source_id.encode())]
        for key, (topic, partitions, columns) in self.forwards.items():
            keys = table.column(key).combine_chunks()
            batch: dict[str, pa.Array] = {
                key: keys,
                TIME: pa.array(times, pa.int64()),
                SOURCE_OFFSET: pa.array(offsets),
            }
            for column in columns:
                batch.setdefault(column, table.column(column).combine_chunks())
            targets = target_partitions(keys.to_pylist(), partitions)
            for target in np.unique(targets).tolist():
                mask = pa.array(targets == target)
                part = {name: col.filter(mask) for name, col in batch.items()}
                out.forwards.append((topic, str(partition).encode(), encode_batch(part), headers, target))


class RekeyStage:
    """Compute the views keyed by a secondary entity from the re-keyed topic."""

    name = "features-rekey"

    def __init__(self, plans: Sequence[ViewPlan], *, entity_key: str) -> None:
        self.plans = [p for p in plans if p.entity_key == entity_key]
        self.entity_key = entity_key

    def new_state(self) -> PartitionState:
        return PartitionState({p.name: ViewState(p) for p in self.plans})

    @property
    def horizon_ms(self) -> int:
        return max(p.horizon_ms for p in self.plans)

    def event_times(self, rec: InRecord) -> list[int]:
        try:
            return [int(t) for t in decode_batch(rec.value or b"").column(TIME).to_pylist()]
        except (KeyError, ValueError, pa.ArrowException):
            return []

    def process(self, state: PartitionState, records: Sequence[InRecord], now_ms: int | None = None) -> StageOutput:
        out = StageOutput()
        if not self.plans:
            return out
        parts: list[pa.Table] = []
        part_offsets: list[np.ndarray] = []
        for rec in records:
            if rec.offset < state.next_offset:
                continue
            try:
                headers = dict(rec.headers)
                source = int(headers[SOURCE_HEADER])
                table = decode_batch(rec.value or b"")
            except (KeyError, ValueError, pa.ArrowException) as exc:
                out.dead.append((rec, "undecodable-forward", exc))
                continue
            source_id = headers.get(SOURCE_ID_HEADER, b"").decode(errors="replace")
            if state.source_ids.get(source, source_id) != source_id:
                state.source_high.pop(source, None)  # the source topic was recreated: its offsets start over
                state.source_watermarks.pop(source, None)
            state.source_ids[source] = source_id
            # Events at or below the highest source offset applied are replayed copies (see module doc).
            high = state.source_high.get(source, -1)
            offsets = table.column(SOURCE_OFFSET).to_numpy()
            if offsets.size and offsets.max() > high:
                parts.append(table.filter(pa.array(offsets > high)))
                part_offsets.append(np.full(parts[-1].num_rows, rec.offset, np.int64))
                state.source_high[source] = int(offsets.max())
                newest = int(pc.max(parts[-1].column(TIME)).as_py())
                state.source_watermarks[source] = max(state.source_watermarks.get(source, NO_TIME), newest)
        if records:
            state.next_offset = max(state.next_offset, records[-1].offset + 1)
        if not parts:
            return out
        table = pa.concat_tables(parts)
        offsets = np.concatenate(part_offsets)
        times = table.column(TIME).to_numpy().astype(np.int64)
        ids = [str(i) for i in table.column(self.entity_key).to_pylist()]
        everything = np.arange(len(ids))
        # The merchant views share one entity set; the first decides what lies beyond the recovered state.
        first = state.views[self.plans[0].name]
        beyond = _beyond_floors(state, first, ids, times, everything)
        for plan in self.plans:
            view = state.views[plan.name]
            rows = view.entity_rows(ids)
            keep = (offsets > view.applied[rows]) & ~beyond
            if view is first:
                out.dead.extend(
                    _dead_events(records, table, offsets, everything[beyond & (offsets > view.applied[rows])])
                )
            rows, idx = rows[keep], everything[keep]
            values = np.empty((len(idx), len(plan.numeric_columns)), np.float64)
            for c, column in enumerate(plan.numeric_columns):
                values[:, c] = table.column(column).to_numpy()[idx]
            distinct = (
                view.value_ids([str(v) for v in table.column(plan.distinct_column).take(pa.array(idx)).to_pylist()])
                if plan.distinct_column
                else None
            )
            status = view.apply(rows, times[idx], values, distinct, offsets[idx])
            out.online[plan.name] = online_rows(view, rows[status == kernels.APPLIED])
            if view is first:
                applied = idx[status == kernels.APPLIED]
        out.applied = len(applied)
        out.event_ms = times[applied].tolist()
        state.advance_watermark(times[applied])
        return out


def _dead_events(
    records: Sequence[InRecord], table: pa.Table, offsets: np.ndarray, dead: np.ndarray
) -> list[tuple[InRecord, str, BaseException | None]]:
    """One dead letter per forwarded message, holding only its events that were not counted."""
    by_offset = {r.offset: r for r in records}
    out: list[tuple[InRecord, str, BaseException | None]] = []
    for offset in np.unique(offsets[dead]).tolist():
        rec = by_offset[offset]
        mine = pa.array(dead[offsets[dead] == offset])
        part = {name: table.column(name).take(mine).combine_chunks() for name in table.column_names}
        out.append((rec._replace(value=encode_batch(part)), BEYOND_STATE, None))
    return out


def _columns_for(plans: Sequence[ViewPlan]) -> list[str]:
    return sorted({c for p in plans for c in (*p.numeric_columns, p.distinct_column) if c})


def _numeric(table: pa.Table, idx: np.ndarray, plan: ViewPlan) -> np.ndarray:
    values = np.empty((len(idx), len(plan.numeric_columns)), np.float64)
    for c, column in enumerate(plan.numeric_columns):
        values[:, c] = table.column(column).to_numpy()[idx]
    return values


def _strings(table: pa.Table, column: str, idx: np.ndarray) -> np.ndarray:
    """A column's values at ``idx`` as an object array of ``str`` (what the id hashes take)."""
    values = table.column(column).take(pa.array(idx))
    if not pa.types.is_string(values.type):
        return np.array([str(v) for v in values.to_pylist()], object)
    return np.asarray(values.to_numpy(zero_copy_only=False), object)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _epoch_ms(value: object) -> int:
    """Exact integer milliseconds (``timestamp() * 1000`` can round 123 ms down to 122)."""
    assert isinstance(value, datetime)
    return (value - _EPOCH) // _MS
