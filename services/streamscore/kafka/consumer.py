"""A manual-commit consumer that hands out batches and commits exactly what the caller finished."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from streamscore.errors import StreamscoreError
from streamscore.kafka.config import consumer_config
from streamscore.settings import KafkaSettings

__all__ = ["Consumer", "ConsumerError", "next_offsets", "take_ready"]

log = logging.getLogger(__name__)
# A first message taken faster than this was already fetched when the poll began.
_ALREADY_WAITING_S = 0.001


class ConsumerError(StreamscoreError, RuntimeError):
    """A non-retriable error reported by the consumer (retriable ones are retried by librdkafka itself)."""


def next_offsets(messages: Iterable[confluent_kafka.Message]) -> list[TopicPartition]:
    """The offsets to commit after ``messages``: one past the highest offset seen per partition."""
    highest: dict[tuple[str, int], int] = {}
    for msg in messages:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None:
            continue  # a message that was never consumed has no position to commit
        if offset > highest.get((topic, partition), -1):
            highest[(topic, partition)] = offset
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(highest.items())]


def take_ready(consumer: confluent_kafka.Consumer, max_messages: int, idle_s: float) -> list[confluent_kafka.Message]:
    """Wait up to ``idle_s`` for a first message, then take what else is already fetched (up to
    ``max_messages``). librdkafka's ``consume(N, timeout)`` returns only once N messages are there or the
    timeout passed: a reader of a short partition asking for 10,000 waits the whole timeout every time."""
    first = consumer.consume(num_messages=1, timeout=idle_s)
    if not first or max_messages <= 1:
        return first
    return first + consumer.consume(num_messages=max_messages - 1, timeout=0)


class Consumer:
    """Thin wrapper over :class:`confluent_kafka.Consumer` with auto-commit off.

    Use :meth:`poll_batch` to take up to ``max_messages`` or wait at most ``timeout_s``, then
    :meth:`commit` the same messages once their output is acknowledged.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        group_id: str,
        topics: Sequence[str],
        *,
        client_suffix: str = "consumer",
        **overrides: Any,
    ) -> None:
        self._consumer = confluent_kafka.Consumer(
            consumer_config(kafka, group_id, client_suffix=client_suffix, **overrides)
        )
        self._taken_at: float | None = None  # when poll_ready last returned (see there)
        if topics:  # no topics: the caller assigns partitions itself (``raw.assign``)
            self._consumer.subscribe(list(topics))

    def poll_batch(self, max_messages: int = 500, timeout_s: float = 0.1) -> list[confluent_kafka.Message]:
        """Up to ``max_messages``, waiting up to ``timeout_s`` for them all (librdkafka's ``consume``): for
        bulk readers. Messages without errors; a fatal consumer error raises :class:`ConsumerError`."""
        return self._good(self._consumer.consume(num_messages=max_messages, timeout=timeout_s))

    def poll_ready(self, max_messages: int, idle_s: float, linger_s: float = 0.0) -> list[confluent_kafka.Message]:
        """What has arrived, as soon as something has: wait up to ``idle_s`` for a first message, take what
        else is already fetched (up to ``max_messages``), and only then, if ``linger_s`` > 0, wait for more
        until ``linger_s`` after the first message arrived. ``poll_batch`` with a timeout holds a half-full
        batch for the whole timeout at low rates; this one adds no wait unless asked (a deadline, not a
        fixed pause).

        The deadline counts from the arrival of the batch's oldest message. A first message that was already
        waiting arrived after the previous poll returned, and under steady load right after it, so the
        deadline counts from there: messages that queued while the caller processed the previous batch have
        waited long enough and go at once (the batch grows with the load instead of the latency)."""
        started = time.monotonic()
        batch = take_ready(self._consumer, max_messages, idle_s)
        now = time.monotonic()
        if not batch:
            self._taken_at = now
            return []
        waited = now - started > _ALREADY_WAITING_S
        deadline = (now if waited or self._taken_at is None else self._taken_at) + linger_s
        while len(batch) < max_messages and (left := deadline - time.monotonic()) > 0:
            more = self._consumer.consume(num_messages=max_messages - len(batch), timeout=left)
            if not more:
                break
            batch += more
        self._taken_at = time.monotonic()
        return self._good(batch)

    def _good(self, batch: list[confluent_kafka.Message]) -> list[confluent_kafka.Message]:
        good: list[confluent_kafka.Message] = []
        for msg in batch:
            err = msg.error()
            if err is None:
                good.append(msg)
            elif err.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                continue
            elif err.fatal() or not err.retriable():
                raise ConsumerError(err.str())
            else:
                log.warning("transient consumer error (librdkafka retries it): %s", err.str())
        return good

    def commit(self, messages: Iterable[confluent_kafka.Message]) -> None:
        """Synchronously commit the offsets after ``messages`` (no-op for an empty batch)."""
        offsets = next_offsets(messages)
        if offsets:
            self._consumer.commit(offsets=offsets, asynchronous=False)

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def raw(self) -> confluent_kafka.Consumer:
        return self._consumer
