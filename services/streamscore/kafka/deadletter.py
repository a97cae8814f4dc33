"""Dead-letter publishing: bad input is never dropped silently and never stops a service.

The dead-letter message keeps the original key, value and headers byte for byte, so it can be inspected or
replayed as it was, and adds ``streamscore.error.*`` headers that say where it came from and why it failed
(the same idea as Kafka Connect's ``__connect.errors.*`` headers).

Those headers make the copy larger than the original, so an original near the broker's size limit would
be rejected (``MSG_SIZE_TOO_LARGE``) and a consumer that retries until its dead letter is acknowledged
would never move past it. A copy that would not fit is cut to fit instead: the original headers go first
(they rarely matter for a reprocessing), then the value is truncated, and ``original-size`` and
``original-sha256`` (of the whole value) say what it was.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import confluent_kafka
from prometheus_client import Counter

from streamscore.kafka.producer import Header, Producer

__all__ = [
    "HEADER_PREFIX",
    "MAX_DEAD_LETTER_BYTES",
    "DeadLetter",
    "DeadLetterPublisher",
    "message_headers",
    "read_dead_letter",
]

HEADER_PREFIX = "streamscore.error."
_MAX_EXCEPTION_CHARS = 1000
# What a dead letter may weigh: librdkafka's default message.max.bytes (1,000,000) less room for the record's
# framing; the broker's default (1,048,588) is larger.
MAX_DEAD_LETTER_BYTES = 990_000
_MAX_KEY_BYTES = 1024

DEAD_LETTERS = Counter(
    "streamscore_dead_letters",
    "Messages sent to the dead-letter topic",
    ["stage", "reason"],
)
TRUNCATED = Counter(
    "streamscore_dead_letters_truncated",
    "Dead letters cut to fit the broker's size limit (original size and sha256 in their headers)",
    ["stage"],
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

    def __init__(self, producer: Producer, topic: str, stage: str, *, max_bytes: int = MAX_DEAD_LETTER_BYTES) -> None:
        self.producer = producer
        self.topic = topic
        self.stage = stage
        self.max_bytes = max_bytes

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
        key_bytes = key.encode() if isinstance(key, str) else (key or b"")
        error = [(HEADER_PREFIX + name, v.encode()) for name, v in context.items()]
        original = list(headers)
        if _size(key_bytes, value, original + error) > self.max_bytes:
            whole = value or b""
            cut = ["headers"] if original else []
            original = []
            if len(key_bytes) > _MAX_KEY_BYTES:
                key = key_bytes = key_bytes[:_MAX_KEY_BYTES]
                cut.append("key")
            error += [
                (HEADER_PREFIX + "original-size", str(len(whole)).encode()),
                (HEADER_PREFIX + "original-sha256", hashlib.sha256(whole).hexdigest().encode()),
                (HEADER_PREFIX + "truncated", b""),
            ]
            room = self.max_bytes - _size(key_bytes, b"", error) - 16
            if len(whole) > room:
                value = whole[: max(room, 0)]
                cut.append("value")
            error[-1] = (HEADER_PREFIX + "truncated", ",".join(cut).encode())
            TRUNCATED.labels(stage=self.stage).inc()
        self.producer.send(self.topic, value, key=key, headers=original + error)
        DEAD_LETTERS.labels(stage=self.stage, reason=reason).inc()


def _size(key: bytes, value: bytes | None, headers: list[Header]) -> int:
    """A record's payload bytes (its framing varints are within the margin of MAX_DEAD_LETTER_BYTES)."""
    return len(key) + len(value or b"") + sum(len(name) + len(v) + 8 for name, v in headers)


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
