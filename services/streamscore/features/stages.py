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

import numpy as np
import pyarrow as pa

from streamscore.features import kernels
from streamscore.features.forward import FORMAT_HEADER, decode_batch, encode_batch, target_partitions
from streamscore.features.plan import ViewPlan
from streamscore.features.rules import Deduplicator, EventRules
from streamscore.features.state import ViewState
from streamscore.kafka import Header
from streamscore.serde import Serde, SerdeError

__all__ = ["InRecord", "IngestStage", "OnlineRows", "PartitionState", "RekeyStage", "StageOutput"]

SOURCE_HEADER = "streamscore.src.partition"
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
    """Everything a partition's processing depends on; a snapshot of it is a recovery point."""

    views: dict[str, ViewState]
    next_offset: int = 0
    dedup: Deduplicator | None = None
    source_high: dict[int, int] = field(default_factory=dict)  # rekey: source partition -> offset applied


def _online(state: ViewState, rows: np.ndarray) -> OnlineRows:
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
        self.serde = serde
        self.partition_key = partition_key
        # entity key -> (topic, partitions, columns its views read)
        self.forwards = {
            key: (topic, n, _columns_for([p for p in plans if p.entity_key == key]))
            for key, (topic, n) in (forwards or {}).items()
        }

    def new_state(self) -> PartitionState:
        return PartitionState({p.name: ViewState(p) for p in self.plans}, dedup=Deduplicator(self.rules.allowed_lag_ms))

    def process(self, state: PartitionState, records: Sequence[InRecord], now_ms: int | None = None) -> StageOutput:
        out = StageOutput()
        now = int(time.time() * 1000) if now_ms is None else now_ms
        kept: list[InRecord] = []
        decoded: list[dict[str, object]] = []
        for rec in records:
            if rec.offset < state.next_offset:
                continue  # already inside the snapshot this state was restored from
            try:
                record = self.serde.decode(rec.value or b"")
            except SerdeError as exc:
                out.dead.append((rec, f"undecodable-{exc.reason}", exc))
                continue
            reason = self.rules.invalid_reason(record, now)
            if reason is not None:
                out.dead.append((rec, reason, None))
                continue
            kept.append(rec)
            decoded.append(record)
        if records:
            state.next_offset = max(state.next_offset, records[-1].offset + 1)
        if not kept:
            return out

        lead = state.views[self.plans[0].name]
        keys = [str(r[self.partition_key]) for r in decoded]
        times = np.fromiter((_epoch_ms(r["event_time"]) for r in decoded), np.int64, len(decoded))
        rows = lead.entity_rows(keys)

        dedup = state.dedup
        assert dedup is not None
        fresh = np.ones(len(kept), np.bool_)
        for i, r in enumerate(decoded):
            if dedup.seen(keys[i], str(r["event_id"]), int(times[i]), int(lead.seen_max[rows[i]])):
                fresh[i] = False
                out.dead.append((kept[i], "duplicate", None))
        idx = np.nonzero(fresh)[0]
        late = lead.gate(rows[idx], times[idx], self.rules.allowed_lag_ms)
        for i in idx[late].tolist():
            out.dead.append((kept[i], "late", None))
        idx = idx[~late]
        if not len(idx):
            return out

        for plan in self.plans:
            view = state.views[plan.name]
            vrows = rows[idx] if view is lead else view.entity_rows([keys[i] for i in idx])
            values = _numeric(decoded, idx, plan)
            distinct = (
                view.value_ids([str(decoded[i][plan.distinct_column]) for i in idx]) if plan.distinct_column else None
            )
            status = view.apply(vrows, times[idx], values, distinct)
            if view is lead:
                # Older than the entity's whole ring: it can count in no window, so it is late too.
                for i in idx[status == kernels.DROPPED_OLD].tolist():
                    out.dead.append((kept[i], "late", None))
                applied = idx[status == kernels.APPLIED]
            out.online[plan.name] = _online(view, vrows[status == kernels.APPLIED])
        out.applied = len(applied)
        out.event_ms = times[applied].tolist()
        if len(applied):
            partition = kept[0].partition
            offsets = pa.array([kept[i].offset for i in applied.tolist()], pa.int64())
            for key, (topic, partitions, columns) in self.forwards.items():
                keys_out = [str(decoded[i][key]) for i in applied.tolist()]
                table: dict[str, pa.Array] = {
                    key: pa.array(keys_out, pa.string()),
                    TIME: pa.array(times[applied], pa.int64()),
                    SOURCE_OFFSET: offsets,
                }
                for column in columns:
                    if column not in table:
                        table[column] = pa.array([decoded[i][column] for i in applied.tolist()])
                targets = target_partitions(keys_out, partitions)
                headers = [FORMAT_HEADER, (SOURCE_HEADER, str(partition).encode())]
                for target in np.unique(targets).tolist():
                    mask = pa.array(targets == target)
                    part = {name: col.filter(mask) for name, col in table.items()}
                    out.forwards.append((topic, str(partition).encode(), encode_batch(part), headers, target))
        return out


class RekeyStage:
    """Compute the views keyed by a secondary entity from the re-keyed topic."""

    name = "features-rekey"

    def __init__(self, plans: Sequence[ViewPlan], *, entity_key: str) -> None:
        self.plans = [p for p in plans if p.entity_key == entity_key]
        self.entity_key = entity_key

    def new_state(self) -> PartitionState:
        return PartitionState({p.name: ViewState(p) for p in self.plans})

    def process(self, state: PartitionState, records: Sequence[InRecord], now_ms: int | None = None) -> StageOutput:
        out = StageOutput()
        parts: list[pa.Table] = []
        for rec in records:
            if rec.offset < state.next_offset:
                continue
            try:
                source = int(dict(rec.headers)[SOURCE_HEADER])
                table = decode_batch(rec.value or b"")
            except (KeyError, ValueError, pa.ArrowException) as exc:
                out.dead.append((rec, "undecodable-forward", exc))
                continue
            # Events at or below the highest source offset applied are replayed copies (see module doc).
            high = state.source_high.get(source, -1)
            offsets = table.column(SOURCE_OFFSET).to_numpy()
            if offsets.size and offsets.max() > high:
                parts.append(table.filter(pa.array(offsets > high)))
                state.source_high[source] = int(offsets.max())
        if records:
            state.next_offset = max(state.next_offset, records[-1].offset + 1)
        if not parts:
            return out
        table = pa.concat_tables(parts)
        times = table.column(TIME).to_numpy().astype(np.int64)
        ids = table.column(self.entity_key).to_pylist()
        for plan in self.plans:
            view = state.views[plan.name]
            rows = view.entity_rows(ids)
            values = np.empty((len(ids), len(plan.numeric_columns)), np.float64)
            for c, column in enumerate(plan.numeric_columns):
                values[:, c] = table.column(column).to_numpy()
            distinct = view.value_ids(table.column(plan.distinct_column).to_pylist()) if plan.distinct_column else None
            status = view.apply(rows, times, values, distinct)
            out.online[plan.name] = _online(view, rows[status == kernels.APPLIED])
        out.applied = len(ids)
        out.event_ms = times.tolist()
        return out


def _columns_for(plans: Sequence[ViewPlan]) -> list[str]:
    return sorted({c for p in plans for c in (*p.numeric_columns, p.distinct_column) if c})


def _numeric(decoded: list[dict[str, object]], idx: np.ndarray, plan: ViewPlan) -> np.ndarray:
    cols = plan.numeric_columns
    values = np.empty((len(idx), len(cols)), np.float64)
    for c, col in enumerate(cols):
        values[:, c] = [float(decoded[i][col]) for i in idx.tolist()]
    return values


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _epoch_ms(value: object) -> int:
    """Exact integer milliseconds (``timestamp() * 1000`` can round 123 ms down to 122)."""
    assert isinstance(value, datetime)
    return (value - _EPOCH) // _MS
