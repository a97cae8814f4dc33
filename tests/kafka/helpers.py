"""Small helpers for tests that talk to the real broker."""

from __future__ import annotations

import time

import confluent_kafka
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamscore.kafka import Consumer, admin_config
from streamscore.settings import Settings


def create_topic(settings: Settings, name: str, partitions: int = 1) -> str:
    admin = AdminClient(admin_config(settings.kafka))
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def read_all(
    settings: Settings, topic: str, expected: int, *, group: str, timeout_s: float = 30.0
) -> list[confluent_kafka.Message]:
    """Read ``expected`` messages from the start of ``topic`` (fails the test if fewer arrive)."""
    out: list[confluent_kafka.Message] = []
    with Consumer(settings.kafka, group, [topic]) as consumer:
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            out.extend(consumer.poll_batch(500, 0.5))
    assert len(out) >= expected, f"read {len(out)} of {expected} messages from {topic}"
    return out


def drain(settings: Settings, topic: str, *, group: str, idle_s: float = 3.0, timeout_s: float = 60.0) -> list:
    """Every message of ``topic`` from the start: read until nothing new arrives for ``idle_s``."""
    out: list[confluent_kafka.Message] = []
    with Consumer(settings.kafka, group, [topic]) as consumer:
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < idle_s:
            batch = consumer.poll_batch(1000, 0.5)
            if batch:
                out.extend(batch)
                quiet_since = time.monotonic()
    return out
