"""The most recent window of transactions, read back from the Kafka log into the generator's Parquet schema.

Retraining must learn from what the stream saw, after the drift, not from the history the champion was
trained on; the transactions topic is that record (labels included). Its message timestamps are wall-clock
times of when each was produced, so the read starts at the first offset produced in the last ``window +
warmup`` hours of wall time (event time never runs ahead of it) and the window is then cut in event time,
ending at the newest *labelled* transaction (a label is what training needs; unlabelled ones are newer
than any lesson). The warm-up before the window is replayed too, so the 24 h windows of its first rows are
whole.
Rows keep each partition's order: partitions are keyed by user, and the backfill's lateness rules compare
each user's events in arrival order.

The window is bounded by disk, not memory: decoded records (about a kilobyte each as Python objects) are
held ``retrain.buffer_rows`` at a time, then appended as Arrow batches to one Parquet spill file per
partition in a scratch directory beside ``out``. One consumer assigned a partition receives it in offset
order, so each spill file is already in arrival order and ``out`` is those files one after the other, cut
at the warm-up's start and streamed batch by batch; the counts are a DuckDB query over ``out``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import confluent_kafka
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streamscore.errors import StreamscoreError
from streamscore.generator.stream import ARROW_SCHEMA, TRANSACTION_FIELDS
from streamscore.kafka import Consumer
from streamscore.serde import Serde, SerdeError
from streamscore.settings import Settings

__all__ = ["RecentWindow", "WindowError", "export_window"]

Progress = Callable[[int, int], None]  # (messages read, messages to read)
_IDLE_S = 5.0
_POLL_MAX = 5000

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
    spills: int = 0  # times the decoded records were written to disk (each time at most retrain.buffer_rows)


class _Spill:
    """Decoded records, ``limit`` at most in memory, appended to ``<dir>/<partition>.parquet`` as Arrow."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory = directory
        self.limit = limit
        self.held: dict[int, list[dict[str, Any]]] = {}
        self.count = 0  # records held now
        self.rows = 0  # records written
        self.spills = 0
        self.newest_labelled: datetime | None = None
        self._writers: dict[int, pq.ParquetWriter] = {}

    def add(self, partition: int, record: dict[str, Any]) -> None:
        self.held.setdefault(partition, []).append(record)
        self.count += 1
        if self.count >= self.limit:
            self.flush()

    def flush(self) -> None:
        if not self.count:
            return
        for partition, records in self.held.items():
            batch = pa.RecordBatch.from_pylist(records, schema=ARROW_SCHEMA)
            labelled = pc.max(pc.filter(batch["event_time"], pc.is_valid(batch["is_fraud"]))).as_py()
            if labelled is not None and (self.newest_labelled is None or labelled > self.newest_labelled):
                self.newest_labelled = labelled.astimezone(UTC)  # Arrow gives ZoneInfo("UTC"); Serde gives UTC
            if partition not in self._writers:
                path = self.directory / f"{partition}.parquet"
                self._writers[partition] = pq.ParquetWriter(path, ARROW_SCHEMA, compression="lz4")
            self._writers[partition].write_batch(batch)
        self.rows += self.count
        self.spills += 1
        self.held, self.count = {}, 0

    def close(self) -> list[Path]:
        """Flushes and closes; returns the spill files in partition order."""
        self.flush()
        for writer in self._writers.values():
            writer.close()
        return [self.directory / f"{p}.parquet" for p in sorted(self._writers)]


def export_window(
    settings: Settings, out: Path, *, now_s: float | None = None, progress: Progress | None = None
) -> RecentWindow:
    """Write the last ``window_h`` (plus ``warmup_h``) of the transactions topic to ``out`` (Parquet)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.stem}-spill-", dir=out.parent) as scratch:
        spill = _Spill(Path(scratch), settings.retrain.buffer_rows)
        try:
            undecodable = _read(settings, spill, now_s, progress)
        finally:
            parts = spill.close()
        log.info("%d transactions of %s read in %d spill(s) of at most %d", spill.rows, settings.topics.transactions,
                 spill.spills, spill.limit)  # fmt: skip
        return _cut(settings, out, spill, parts, undecodable)


def _read(settings: Settings, spill: _Spill, now_s: float | None, progress: Progress | None) -> int:
    """Every decodable message of the window's wall-clock span into ``spill``; returns the undecodable count."""
    topic = settings.topics.transactions
    retrain = settings.retrain
    serde = Serde("transaction", registry_url=settings.schema_registry_url, subject=f"{topic}-value")
    since_ms = int(((time.time() if now_s is None else now_s) - 3600 * (retrain.window_h + retrain.warmup_h)) * 1000)
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
            for msg in consumer.poll_batch(min(_POLL_MAX, spill.limit), 0.5):
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
                spill.add(partition, record)
            if progress is not None:
                progress(total - sum(hi - lo for lo, hi in remaining.values()), total)
        if remaining:
            log.warning("read of %s stopped short of the end of partitions %s (nothing more came for %.0fs)",
                        topic, sorted(remaining), _IDLE_S)  # fmt: skip
    return undecodable


def _cut(settings: Settings, out: Path, spill: _Spill, parts: list[Path], undecodable: int) -> RecentWindow:
    """``out``: the spill files in partition order from the warm-up's start on; the window's counts."""
    topic, retrain = settings.topics.transactions, settings.retrain
    if not spill.rows:
        raise WindowError(f"every recent message on {topic!r} was undecodable")
    if spill.newest_labelled is None:
        raise WindowError(
            f"no labelled transactions on {topic!r} in the last {retrain.window_h + retrain.warmup_h:g} h"
        )
    end = spill.newest_labelled + timedelta(milliseconds=1)
    start = end - timedelta(hours=retrain.window_h)
    warmup_start = start - timedelta(hours=retrain.warmup_h)
    # Microseconds: a fractional window_h can put the cut between two milliseconds.
    since = pa.scalar(warmup_start, type=pa.timestamp("us", tz="UTC"))
    with pq.ParquetWriter(out, ARROW_SCHEMA, compression="zstd") as writer:
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches(batch_size=spill.limit, columns=list(TRANSACTION_FIELDS)):
                kept = batch.filter(pc.greater_equal(batch["event_time"].cast(since.type), since))
                if kept.num_rows:
                    writer.write_batch(kept)
    rows, labelled, frauds = _counts(out, start)
    return RecentWindow(out, warmup_start, start, end, rows, labelled, frauds, undecodable, spill.spills)


def _counts(path: Path, start: datetime) -> tuple[int, int, int]:
    """(rows, labelled rows from ``start`` on, frauds from ``start`` on) of a transactions Parquet file."""
    since_us = (start - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    with duckdb.connect() as con:
        found = con.execute(
            "SELECT count(*), count(is_fraud) FILTER (epoch_us(event_time) >= $since), "
            "count(*) FILTER (is_fraud AND epoch_us(event_time) >= $since) FROM read_parquet($path)",
            {"since": since_us, "path": str(path)},
        ).fetchone()
    assert found is not None
    return int(found[0]), int(found[1]), int(found[2])
