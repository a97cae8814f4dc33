"""Every schema through the real broker, in both framings."""

from __future__ import annotations

import os

import pytest

from streamscore.kafka import Producer
from streamscore.serde import SCHEMA_NAMES, Serde
from streamscore.settings import Settings
from tests.kafka.helpers import create_topic, read_all
from tests.serde.samples import sample_record

pytestmark = pytest.mark.integration

REAL_REGISTRY = os.environ.get("TEST_SCHEMA_REGISTRY_URL")


def _roundtrip(settings: Settings, topic: str, serdes: dict[str, Serde], unique: str) -> None:
    producer = Producer(settings.kafka)
    for name, serde in serdes.items():
        producer.send(topic, serde.encode(sample_record(name)), key=name)
    producer.flush()
    msgs = read_all(settings, topic, len(serdes), group=f"g-{unique}")
    decoded = {m.key().decode(): serdes[m.key().decode()].decode(m.value()) for m in msgs}
    assert decoded == {name: sample_record(name) for name in serdes}


def test_single_object_encoding_through_kafka(settings: Settings, unique: str) -> None:
    topic = create_topic(settings, f"avro-so-{unique}")
    serdes = {name: Serde(name) for name in SCHEMA_NAMES}
    assert all(s.encode(sample_record(n))[:2] == b"\xc3\x01" for n, s in serdes.items())
    _roundtrip(settings, topic, serdes, unique)


def test_confluent_framing_through_kafka_with_in_process_registry(settings: Settings, unique: str) -> None:
    """The broker is real; the registry is confluent-kafka's in-process mock (no registry server here)."""
    topic = create_topic(settings, f"avro-cf-{unique}")
    serdes = {n: Serde(n, registry_url=f"mock://{unique}", subject=f"{topic}-{n}-value") for n in SCHEMA_NAMES}
    assert all(s.encode(sample_record(n))[:1] == b"\x00" for n, s in serdes.items())
    _roundtrip(settings, topic, serdes, unique)


@pytest.mark.skipif(REAL_REGISTRY is None, reason="no schema registry configured: set TEST_SCHEMA_REGISTRY_URL")
def test_confluent_framing_through_kafka_with_real_registry(settings: Settings, unique: str) -> None:
    topic = create_topic(settings, f"avro-reg-{unique}")
    serdes = {n: Serde(n, registry_url=REAL_REGISTRY, subject=f"{topic}-{n}-value") for n in SCHEMA_NAMES}
    _roundtrip(settings, topic, serdes, unique)
