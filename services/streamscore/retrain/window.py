"""The most recent window of transactions, read back from the Kafka log into the generator's Parquet schema.

Retraining must learn from what the stream saw, after the drift, not from the history the champion was
trained on; the transactions topic is that record (labels included). Its message timestamps are wall-clock
times of when each was produced, so the read starts at the first offset produced in the last ``window +
warmup`` hours of wall time (event time never runs ahead of it) and the window is then cut in event time,
ending at the newest *labelled* transaction (a label is what training needs; unlabelled ones are newer
than any lesson). The warm-up before the window is replayed too, so the 24 h windows of its first rows are
whole.
Rows keep each partition's order: partitions are keyed by user, and the backfill's lateness rules compare
each user's events in arrival order. The window is held in memory: about a kilobyte per transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import confluent_kafka
import pyarrow as pa
import pyarrow.parquet as pq

from streamscore.errors import StreamscoreError
from streamscore.generator.stream import ARROW_SCHEMA, TRANSACTION_FIELDS
from streamscore.kafka import Consumer
from streamscore.serde import Serde, SerdeError
from streamscore.settings import Settings

__all__ = ["RecentWindow", "WindowError", "export_window"]

Progress = Callable[[int, int], None]  # (messages read, messages to read)
_IDLE_S = 5.0

log = logging.getLogger(__name__)


class WindowError(StreamscoreError):
    """The transactions topic has nothing to retrain on."""


@dataclass(frozen=True)
class RecentWindow:
    path: Path
    warmup_start: datetime
    start: datetime
    end: datetime  # exclusive: just after the newest transaction
    rows: int
    labelled: int
    frauds: int
    undecodable: int


def export_window(
    settings: Settings, out: Path, *, now_s: float | None = None, progress: Progress | None = None
) -> RecentWindow:
    """Write the last ``window_h`` (plus ``warmup_h``) of the transactions topic to ``out`` (Parquet)."""
    topic = settings.topics.transactions
    retrain = settings.retrain
    serde = Serde("transaction", registry_url=settings.schema_registry_url, subject=f"{topic}-value")
    since_ms = int(((time.time() if now_s is None else now_s) - 3600 * (retrain.window_h + retrain.warmup_h)) * 1000)
    rows: list[tuple[int, int, dict[str, object]]] = []
    with Consumer(settings.kafka, f"{retrain.group_id}-export", [], client_suffix="retrain-export") as consumer:
        meta = consumer.raw.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None:
            raise WindowError(f"cannot read topic {topic!r}: {meta.error.str()}")
        wanted = [confluent_kafka.TopicPartition(topic, p, since_ms) for p in meta.partitions]
        starts = consumer.raw.offsets_for_times(wanted, timeout=10)
        ends = {p: consumer.raw.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=10)[1]
                for p in meta.partitions}  # fmt: skip
        todo = {tp.partition: (tp.offset, ends[tp.partition]) for tp in starts if 0 <= tp.offset < ends[tp.partition]}
        total = sum(hi - lo for lo, hi in todo.values())
        if not todo:
            raise WindowError(f"no transactions on {topic!r} in the last {retrain.window_h + retrain.warmup_h:g} h")
        consumer.raw.assign([confluent_kafka.TopicPartition(topic, p, lo) for p, (lo, _) in todo.items()])
        remaining = dict(todo)
        undecodable = 0
        idle_since = time.monotonic()
        # Control records (transaction markers) occupy offsets no message has: a partition can end short of
        # its high watermark, so a read that has seen nothing of what it waits for for a while is complete.
        while remaining and time.monotonic() - idle_since < _IDLE_S:
            for msg in consumer.poll_batch(5000, 0.5):
                partition, offset = msg.partition() or 0, msg.offset() or 0
                if partition not in remaining:
                    continue
                if offset + 1 >= remaining[partition][1]:
                    del remaining[partition]
                    if offset >= todo[partition][1]:  # appended after the read began: not ours
                        continue
                idle_since = time.monotonic()
                try:
                    record = serde.decode(msg.value() or b"")
                except SerdeError as exc:
                    if exc.reason == "registry":  # not the message's fault: a partial window would mislead
                        raise WindowError(f"schema registry unreachable while reading {topic!r}: {exc}") from None
                    undecodable += 1  # the processor dead-letters these; they are not training data either
                    continue
                rows.append((partition, offset, record))
            if progress is not None:
                progress(total - sum(hi - lo for lo, hi in remaining.values()), total)
        if remaining:
            log.warning("read of %s stopped short of the end of partitions %s (nothing more came for %.0fs)",
                        topic, sorted(remaining), _IDLE_S)  # fmt: skip
    if not rows:
        raise WindowError(f"every recent message on {topic!r} was undecodable")
    rows.sort(key=lambda r: r[:2])  # each partition in order
    records = [r[2] for r in rows]
    labelled = [r["event_time"] for r in records if r["is_fraud"] is not None]
    if not labelled:
        raise WindowError(
            f"no labelled transactions on {topic!r} in the last {retrain.window_h + retrain.warmup_h:g} h"
        )
    newest = max(labelled)  # type: ignore[type-var]
    assert isinstance(newest, datetime)
    end = newest + timedelta(milliseconds=1)
    start = end - timedelta(hours=retrain.window_h)
    warmup_start = start - timedelta(hours=retrain.warmup_h)
    kept = [r for r in records if r["event_time"] >= warmup_start]  # type: ignore[operator]
    table = pa.Table.from_pylist([{f: r[f] for f in TRANSACTION_FIELDS} for r in kept], schema=ARROW_SCHEMA)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out, compression="zstd")
    in_window = [r for r in kept if r["event_time"] >= start]  # type: ignore[operator]
    return RecentWindow(
        out, warmup_start, start, end, len(kept), sum(r["is_fraud"] is not None for r in in_window),
        sum(bool(r["is_fraud"]) for r in in_window), undecodable,
    )  # fmt: skip
