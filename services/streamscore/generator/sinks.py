"""Where a generated stream goes: a Parquet file (history, backfills) or the transactions topic.

Both stream chunk by chunk, so memory is bounded by the chunk size whatever the number of events, and
both report progress as increments (records just written or sent), which is what a progress bar's
``advance`` takes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from streamscore.generator.config import GeneratorConfig
from streamscore.generator.stream import ARROW_SCHEMA, DEFAULT_CHUNK_SIZE, generate, generate_tables
from streamscore.kafka import DeliveryError, Producer
from streamscore.serde import Serde
from streamscore.settings import Settings

__all__ = ["PARQUET_ROW_GROUP", "Progress", "produce_to_kafka", "score_request", "write_parquet"]

Progress = Callable[[int], None]

PARQUET_ROW_GROUP = 100_000
# A sleep shorter than this costs more in timer slack than it buys in pacing accuracy.
_MIN_SLEEP_S = 0.005
_INTERRUPTED_FLUSH_S = 5.0


def write_parquet(
    config: GeneratorConfig,
    path: Path,
    progress: Progress | None = None,
    *,
    row_group_size: int = PARQUET_ROW_GROUP,
) -> int:
    """Write the stream to ``path`` in emission order, one row group per ``row_group_size`` events.

    The file appears only once complete (written next to it, then renamed), so a reader or a rerun never
    mistakes an interrupted run's output for a whole stream. The output is byte-identical for the same
    config. Returns the number of records written.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    written = 0
    try:
        with pq.ParquetWriter(partial, ARROW_SCHEMA, compression="zstd") as writer:
            for table in generate_tables(config, chunk_size=row_group_size):
                writer.write_table(table)
                written += table.num_rows
                if progress is not None:
                    progress(table.num_rows)
            if written == 0:
                writer.write_table(ARROW_SCHEMA.empty_table())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return written


def produce_to_kafka(
    config: GeneratorConfig,
    settings: Settings,
    *,
    topic: str | None = None,
    realtime: bool = False,
    wall_rate: float | None = None,
    requests: bool = False,
    where: Callable[[dict[str, Any]], bool] | None = None,
    progress: Progress | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Send the stream to ``topic`` (default: the transactions topic), keyed by ``user_id``, Avro-framed.

    Keying by user keeps each card's transactions in order within a partition, which per-user windows
    need. With ``realtime`` each event is sent once the wall clock has reached its event time, never
    before (a live feed for demos and soak tests: the processor rejects events from the future); with
    ``wall_rate`` the send rate is held at that many events per wall-clock second (a replay of a stream
    faster or slower than its event time); otherwise it is as fast as the producer takes them. ``where`` sends only
    the records it accepts (one part of a stream: the history, then the live part).
    With ``requests`` every transaction is preceded by its score request (:func:`score_request`) on the
    score-requests topic, the order a card network sees them: authorise first, then the transaction (and its
    label) is recorded; inference workers use the transactions as delayed labels.
    Raises :class:`~streamscore.kafka.DeliveryError` if any message was not acknowledged. Returns the number
    of records sent (all of them acknowledged).
    """
    topic = topic or settings.topics.transactions
    serde = Serde("transaction", registry_url=settings.schema_registry_url, subject=f"{topic}-value")
    request_topic = settings.topics.score_requests
    request_serde = Serde("score_request", registry_url=settings.schema_registry_url, subject=f"{request_topic}-value")
    producer = Producer(settings.kafka, client_suffix="generator")
    pace = _Pacer(wall_rate) if wall_rate else None
    if wall_rate or realtime:
        chunk_size = min(chunk_size, max(1, int(wall_rate or config.rate)))  # a second's worth: progress stays live
    sent = 0
    try:
        for records in generate(config, chunk_size=chunk_size):
            reported = sent
            for record in records:
                if where is not None and not where(record):
                    continue
                waited = pace.wait(sent) if pace is not None else False
                if realtime:
                    waited = _wait_until(record["event_time"]) or waited
                if waited and progress is not None and sent > reported:
                    progress(sent - reported)
                    reported = sent
                if requests:
                    request = score_request(record, datetime.now(tz=UTC))
                    producer.send(request_topic, request_serde.encode(request), key=record["user_id"])
                producer.send(topic, serde.encode(record), key=record["user_id"])
                sent += 1
            if progress is not None and sent > reported:
                progress(sent - reported)
    except BaseException:
        # Interrupted (Ctrl-C, a bad record): still deliver what was handed over, briefly, so the topic
        # holds a clean prefix of the stream rather than whatever librdkafka happened to have sent.
        with contextlib.suppress(DeliveryError):
            producer.flush(_INTERRUPTED_FLUSH_S)
        raise
    producer.flush()
    return sent


def score_request(transaction: dict[str, Any], request_time: datetime) -> dict[str, Any]:
    """The score request a card network sends before ``transaction``; its id is the event id, so a label
    that arrives with the transaction later can be matched to the prediction.

    >>> from datetime import datetime, UTC
    >>> t = {"event_id": "e1", "user_id": "u", "merchant_id": "m", "amount": 9.5, "currency": "EUR",
    ...      "country": "DE", "channel": "POS", "event_time": None, "is_fraud": False}
    >>> score_request(t, datetime(2026, 1, 1, tzinfo=UTC))["request_id"]
    'e1'
    """
    return {
        "request_id": transaction["event_id"],
        "user_id": transaction["user_id"],
        "merchant_id": transaction["merchant_id"],
        "amount": transaction["amount"],
        "currency": transaction["currency"],
        "country": transaction["country"],
        "channel": transaction["channel"],
        "request_time": request_time,
        "context": None,
    }


def _wait_until(moment: datetime) -> bool:
    """Sleep until the wall clock reaches ``moment``; True if it slept. Unlike the pacer's, no wait is too
    short to take: an event sent a millisecond early is an event from the future."""
    slept = False
    while (ahead := (moment - datetime.now(tz=UTC)).total_seconds()) > 0:
        time.sleep(ahead)
        slept = True
    return slept


class _Pacer:
    """Holds a constant rate against the wall clock: the n-th event is due ``n / rate`` s after the first,
    so a slow moment is caught up afterwards instead of lowering the average."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._start: float | None = None

    def wait(self, sent: int) -> bool:
        """Sleep until event number ``sent`` is due; True if it slept."""
        now = self._clock()
        if self._start is None:
            self._start = now
        ahead = self._start + sent / self.rate - now
        if ahead < _MIN_SLEEP_S:
            return False
        time.sleep(ahead)
        return True
