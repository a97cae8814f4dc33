"""The feature processor's two stages, independent of the stream framework that feeds them.

``transactions`` is keyed by user, so one partition holds all of a user's events and the user views can
be computed where they arrive. A merchant's events are spread over every partition, so the *ingest* stage
forwards each accepted event to ``transactions-by-merchant``, keyed by merchant, and the *rekey* stage
computes the merchant views there: each merchant again lives in one partition and one process.

Acceptance (validation, duplicates, lateness) is decided once, at ingest, so the merchant views see the
same events the user views do. Forwards carry ``streamscore.src = <partition>:<offset>``; after a replay
the rekey stage skips sources at or below the highest offset it already applied from that partition,
which removes exactly the replayed copies (one producer per source partition keeps them in order).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from services.features import kernels
from services.features.plan import ViewPlan
from services.features.rules import Deduplicator, EventRules
from services.features.state import ViewState
from services.kafka import Header
from services.serde import Serde, SerdeError

__all__ = ["InRecord", "IngestStage", "OnlineRows", "PartitionState", "RekeyStage", "StageOutput"]

SOURCE_HEADER = "streamscore.src"


@dataclass(frozen=True)
class InRecord:
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
    forwards: list[tuple[str, bytes, bytes, list[Header]]] = field(default_factory=list)  # topic, key, value, hdrs
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
        forward_topics: dict[str, str] | None = None,
    ) -> None:
        self.plans = [p for p in plans if p.entity_key == partition_key]
        if not self.plans:
            raise ValueError(f"no feature view is keyed by {partition_key!r}, the key of the source topic")
        self.rules = rules
        self.serde = serde
        self.partition_key = partition_key
        self.forward_topics = forward_topics or {}
        self.numeric = {p.name: list(p.numeric_columns) for p in self.plans}

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
        for i in applied.tolist():
            rec, record = kept[i], decoded[i]
            headers = [*rec.headers, (SOURCE_HEADER, f"{rec.partition}:{rec.offset}".encode())]
            for key, topic in self.forward_topics.items():
                out.forwards.append((topic, str(record[key]).encode(), rec.value or b"", headers))
        return out


class RekeyStage:
    """Compute the views keyed by a secondary entity from the re-keyed topic."""

    name = "features-rekey"

    def __init__(self, plans: Sequence[ViewPlan], serde: Serde, *, entity_key: str) -> None:
        self.plans = [p for p in plans if p.entity_key == entity_key]
        self.serde = serde
        self.entity_key = entity_key

    def new_state(self) -> PartitionState:
        return PartitionState({p.name: ViewState(p) for p in self.plans})

    def process(self, state: PartitionState, records: Sequence[InRecord], now_ms: int | None = None) -> StageOutput:
        out = StageOutput()
        decoded: list[dict[str, object]] = []
        for rec in records:
            if rec.offset < state.next_offset:
                continue
            source = dict(rec.headers).get(SOURCE_HEADER)
            if source is not None:
                src_p, _, src_o = source.decode().partition(":")
                if int(src_o) <= state.source_high.get(int(src_p), -1):
                    continue  # a replayed forward, already applied
                state.source_high[int(src_p)] = int(src_o)
            try:
                decoded.append(self.serde.decode(rec.value or b""))
            except SerdeError as exc:
                out.dead.append((rec, f"undecodable-{exc.reason}", exc))
        if records:
            state.next_offset = max(state.next_offset, records[-1].offset + 1)
        if not decoded:
            return out
        times = np.fromiter((_epoch_ms(r["event_time"]) for r in decoded), np.int64, len(decoded))
        all_idx = np.arange(len(decoded))
        for plan in self.plans:
            view = state.views[plan.name]
            rows = view.entity_rows([str(r[self.entity_key]) for r in decoded])
            distinct = view.value_ids([str(r[plan.distinct_column]) for r in decoded]) if plan.distinct_column else None
            status = view.apply(rows, times, _numeric(decoded, all_idx, plan), distinct)
            out.online[plan.name] = _online(view, rows[status == kernels.APPLIED])
        out.applied = len(decoded)
        out.event_ms = times.tolist()
        return out


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
