"""An idempotent producer whose delivery reports are surfaced, not lost in a callback.

At-least-once processing needs one question answered before offsets are committed: did *every* message of
this batch reach the broker? :meth:`Producer.flush` answers it: it waits for all outstanding delivery
reports and raises :class:`DeliveryError` listing the ones that failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import confluent_kafka

from streamscore.errors import StreamscoreError
from streamscore.kafka.config import producer_config
from streamscore.settings import KafkaSettings

__all__ = ["DeliveryError", "FailedDelivery", "Header", "Producer"]

Header = tuple[str, bytes]


@dataclass(frozen=True)
class FailedDelivery:
    topic: str
    key: bytes | None
    error: str


class DeliveryError(StreamscoreError, RuntimeError):
    """Some messages were not acknowledged by the broker; the caller must not commit their inputs."""

    def __init__(self, failures: Sequence[FailedDelivery]) -> None:
        self.failures = list(failures)
        first = self.failures[0]
        super().__init__(f"{len(self.failures)} message(s) not delivered; first to {first.topic}: {first.error}")


class Producer:
    """Thin wrapper over :class:`confluent_kafka.Producer` that tracks delivery outcomes.

    ``send`` never blocks on the broker; when librdkafka's local queue is full it serves delivery reports
    until there is room, which is the backpressure a fast loop needs.
    """

    def __init__(self, kafka: KafkaSettings, *, client_suffix: str = "producer", **overrides: Any) -> None:
        self._producer = confluent_kafka.Producer(producer_config(kafka, client_suffix=client_suffix, **overrides))
        self._failures: list[FailedDelivery] = []
        self.delivered = 0

    def _on_delivery(self, err: confluent_kafka.KafkaError | None, msg: confluent_kafka.Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self._failures.append(FailedDelivery(msg.topic() or "?", msg.key(), err.str()))

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | str | None = None,
        headers: Sequence[Header] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": self._on_delivery}
        if headers:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for every outstanding delivery report; raise if any message failed or is still pending."""
        remaining = self._producer.flush(timeout_s)
        failures, self._failures = self._failures, []
        if remaining:
            failures.append(FailedDelivery("?", None, f"{remaining} message(s) still in flight after {timeout_s}s"))
        if failures:
            raise DeliveryError(failures)

    def discard_failures(self) -> None:
        """Forget failed deliveries, e.g. the messages an aborted transaction purged (the caller retries them)."""
        self._failures.clear()

    def __len__(self) -> int:
        """Messages produced but not yet acknowledged."""
        return len(self._producer)

    @property
    def raw(self) -> confluent_kafka.Producer:
        """The underlying client, for transactions and metrics."""
        return self._producer
