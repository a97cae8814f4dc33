from __future__ import annotations

import time

import pytest

from streamscore.kafka import Consumer, DeliveryError, Producer, next_offsets
from streamscore.settings import Settings
from tests.kafka.helpers import create_topic, read_all

pytestmark = pytest.mark.integration


def test_flush_raises_for_undeliverable_messages(settings: Settings, unique: str) -> None:
    # Auto-creation is off on our broker, so a missing topic can never acknowledge the message.
    producer = Producer(settings.kafka, **{"message.timeout.ms": 1500})
    producer.send(f"missing-{unique}", b"x", key=b"k")
    with pytest.raises(DeliveryError) as info:
        producer.flush(10)
    assert len(info.value.failures) == 1
    assert info.value.failures[0].key == b"k"


def test_flush_counts_acknowledged_messages(settings: Settings, unique: str) -> None:
    topic = create_topic(settings, f"acks-{unique}", partitions=2)
    producer = Producer(settings.kafka)
    for i in range(100):
        producer.send(topic, f"v{i}".encode(), key=f"k{i % 7}".encode(), headers=[("trace", b"t")])
    producer.flush()
    assert producer.delivered == 100
    assert len(producer) == 0
    msgs = read_all(settings, topic, 100, group=f"g-{unique}")
    assert sorted(m.value() for m in msgs) == sorted(f"v{i}".encode() for i in range(100))
    assert all(m.headers() == [("trace", b"t")] for m in msgs)


def test_uncommitted_messages_are_read_again(settings: Settings, unique: str) -> None:
    topic = create_topic(settings, f"commit-{unique}", partitions=2)
    producer = Producer(settings.kafka)
    for i in range(20):
        producer.send(topic, str(i).encode(), key=str(i).encode())
    producer.flush()
    group = f"g-{unique}"

    first = read_all(settings, topic, 20, group=group)  # closed without committing
    again = read_all(settings, topic, 20, group=group)
    assert sorted(m.value() for m in again) == sorted(m.value() for m in first)

    with Consumer(settings.kafka, group, [topic]) as consumer:
        seen = []
        deadline = time.monotonic() + 30
        while len(seen) < 20 and time.monotonic() < deadline:
            seen.extend(consumer.poll_batch(100, 0.5))
        consumer.commit(seen)
        committed = consumer.raw.committed([tp for tp in next_offsets(seen)], timeout=10)
        assert {(tp.partition, tp.offset) for tp in committed} == {
            (tp.partition, tp.offset) for tp in next_offsets(seen)
        }
    with Consumer(settings.kafka, group, [topic]) as consumer:
        leftovers = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            leftovers.extend(consumer.poll_batch(100, 0.5))
    assert leftovers == []


def test_poll_ready_takes_what_has_arrived_and_no_more_than_asked(settings: Settings, unique: str) -> None:
    """The worker's batch: nothing (after the idle wait) when nothing is there; never more than ``max_messages``;
    with a linger, what arrives within it after the first message joins the batch."""
    topic = create_topic(settings, f"ready-{unique}", partitions=1)
    with Consumer(settings.kafka, f"g-{unique}", [topic]) as consumer:
        assert consumer.poll_ready(10, idle_s=0.5) == []  # joins the group, nothing to read
        producer = Producer(settings.kafka)
        for i in range(10):
            producer.send(topic, f"v{i}".encode(), key=b"k")
        producer.flush()
        first = consumer.poll_ready(4, idle_s=30)
        assert 1 <= len(first) <= 4
        rest: list[bytes] = []
        while len(first) + len(rest) < 10:
            batch = consumer.poll_ready(10, idle_s=30, linger_s=2)
            assert batch, "a produced message never arrived"
            rest += [m.value() for m in batch]
        assert [m.value() for m in first] + rest == [f"v{i}".encode() for i in range(10)]  # in order, once each


def test_poll_ready_does_not_linger_for_messages_that_waited_through_the_previous_batch(
    settings: Settings, unique: str
) -> None:
    """The linger counts from the oldest message's arrival: messages that queued while the caller was busy
    (here: longer than the linger) go at once, where a wait counted from the poll would hold them again."""
    topic = create_topic(settings, f"ready-busy-{unique}", partitions=1)
    linger_s = 3.0
    with Consumer(settings.kafka, f"g-{unique}", [topic]) as consumer:
        deadline = time.monotonic() + 60
        while not consumer.raw.assignment():  # joined, so the messages below are fetched while they wait
            assert consumer.poll_ready(10, idle_s=0.5) == []  # the "previous batch" ends with the last of these
            assert time.monotonic() < deadline, "never assigned a partition"
        producer = Producer(settings.kafka)
        for i in range(3):
            producer.send(topic, f"v{i}".encode(), key=b"k")
        producer.flush()
        time.sleep(linger_s + 0.5)  # the caller is busy; the messages wait, fetched
        started = time.monotonic()
        batch = consumer.poll_ready(100, idle_s=30, linger_s=linger_s)
        took = time.monotonic() - started
    assert [m.value() for m in batch] == [b"v0", b"v1", b"v2"]
    assert took < linger_s  # not a fresh linger: the old rule waited the whole linger_s for a full batch
