"""Dead-letter publishing: bad input is never dropped silently and never stops a service.

The dead-letter message keeps the original key, value and headers byte for byte, so it can be inspected or
replayed as it was, and adds ``streamscore.error.*`` headers that say where it came from and why it failed
(the same idea as Kafka Connect's ``__connect.errors.*`` headers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import confluent_kafka
from prometheus_client import Counter

from streamscore.kafka.producer import Header, Producer

__all__ = ["HEADER_PREFIX", "DeadLetter", "DeadLetterPublisher", "message_headers", "read_dead_letter"]

HEADER_PREFIX = "streamscore.error."
_MAX_EXCEPTION_CHARS = 1000

DEAD_LETTERS = Counter(
    "streamscore_dead_letters",
    "Messages sent to the dead-letter topic",
    ["stage", "reason"],
)


def message_headers(msg: confluent_kafka.Message) -> list[Header]:
    """A consumed message's headers as (name, bytes) pairs, in order (consumers always give a list)."""
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in pairs]


def _exception_text(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    text = f"{type(exc).__name__}: {exc}"
    return text[:_MAX_EXCEPTION_CHARS]


class DeadLetterPublisher:
    """Publishes failed messages of one processing ``stage`` to the dead-letter topic.

    It uses the caller's producer so that dead letters are flushed (and acknowledged) together with the
    stage's regular output before the input offsets are committed.
    """

    def __init__(self, producer: Producer, topic: str, stage: str) -> None:
        self.producer = producer
        self.topic = topic
        self.stage = stage

    def publish(self, msg: confluent_kafka.Message, reason: str, exc: BaseException | None = None) -> None:
        self.publish_raw(
            msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key(), msg.value(), message_headers(msg),
            reason, exc,
        )  # fmt: skip

    def publish_raw(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | str | None,
        value: bytes | None,
        headers: list[Header],
        reason: str,
        exc: BaseException | None = None,
    ) -> None:
        """For callers whose messages come from another client (faust/aiokafka)."""
        context = {
            "topic": topic,
            "partition": str(partition),
            "offset": str(offset),
            "stage": self.stage,
            "reason": reason,
            "exception": _exception_text(exc),
        }
        out = list(headers) + [(HEADER_PREFIX + name, v.encode()) for name, v in context.items()]
        self.producer.send(self.topic, value, key=key, headers=out)
        DEAD_LETTERS.labels(stage=self.stage, reason=reason).inc()


@dataclass(frozen=True)
class DeadLetter:
    """A dead-letter message read back: the original bytes and why they failed (schema ``dead_letter``)."""

    topic: str
    partition: int
    offset: int
    stage: str
    reason: str
    exception: str | None
    key: bytes | None
    value: bytes
    headers: list[Header]
    failed_at: datetime

    def to_record(self) -> dict[str, Any]:
        """The Avro ``DeadLetter`` record (``schemas/dead_letter.avsc``) of this message."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "stage": self.stage,
            "reason": self.reason,
            "exception": self.exception,
            "key": self.key,
            "value": self.value,
            "failed_at": self.failed_at,
        }


def read_dead_letter(msg: confluent_kafka.Message) -> DeadLetter:
    """Parse a message from the dead-letter topic; raises ValueError if it lacks the error headers."""
    context: dict[str, str] = {}
    original: list[Header] = []
    for name, raw in message_headers(msg):
        if name.startswith(HEADER_PREFIX):
            context[name.removeprefix(HEADER_PREFIX)] = raw.decode("utf-8", "replace")
        else:
            original.append((name, raw))
    missing = {"topic", "partition", "offset", "stage", "reason"} - context.keys()
    if missing:
        raise ValueError(f"not a streamscore dead letter: missing headers {sorted(missing)}")
    _, ts = msg.timestamp()
    return DeadLetter(
        topic=context["topic"],
        partition=int(context["partition"]),
        offset=int(context["offset"]),
        stage=context["stage"],
        reason=context["reason"],
        exception=context.get("exception") or None,
        key=msg.key(),
        value=msg.value() or b"",
        headers=original,
        failed_at=datetime.fromtimestamp(max(ts, 0) / 1000, tz=UTC),
    )
