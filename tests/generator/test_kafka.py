"""produce_to_kafka through the real broker: every record arrives, keyed by user, in per-user order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streamscore.generator import GeneratorConfig, generate, produce_to_kafka
from streamscore.generator import sinks as sinks_module
from streamscore.serde import Serde
from streamscore.settings import Settings
from tests.kafka.helpers import create_topic, read_all

CONFIG = GeneratorConfig(events=3000, users=40, merchants=30, seed=13, fraud_rate=0.05)


def _received(settings: Settings, topic: str, serde: Serde, count: int, group: str) -> list[tuple[str, dict]]:
    messages = read_all(settings, topic, count, group=group)
    assert len(messages) == count
    return [(m.key().decode(), serde.decode(m.value())) for m in messages]


@pytest.mark.integration
def test_produce_to_kafka_delivers_the_generated_stream(settings: Settings, unique: str):
    topic = create_topic(settings, f"gen-{unique}", 2)
    steps: list[int] = []
    assert produce_to_kafka(CONFIG, settings, topic=topic, progress=steps.append, chunk_size=1000) == CONFIG.events
    assert steps == [1000, 1000, 1000]

    expected = [record for chunk in generate(CONFIG) for record in chunk]
    received = _received(settings, topic, Serde("transaction"), CONFIG.events, f"g-{unique}")
    assert all(key == record["user_id"] for key, record in received)
    assert sorted(received, key=lambda kv: kv[1]["event_id"]) == sorted(
        ((r["user_id"], r) for r in expected), key=lambda kv: kv[1]["event_id"]
    )
    # One user's transactions share a partition, so they arrive in the order they were emitted.
    for user in {r["user_id"] for r in expected[:200]}:
        assert [r for k, r in received if k == user] == [r for r in expected if r["user_id"] == user]


@pytest.mark.integration
def test_realtime_never_sends_an_event_before_its_time(settings: Settings, unique: str):
    """With --realtime each event leaves when the wall clock reaches its event time: none is in the future
    when it is produced (its Kafka timestamp), at whatever hour this runs. Through a schema registry too."""
    topic = create_topic(settings, f"gen-rt-{unique}", 1)
    with_registry = settings.model_copy(update={"schema_registry_url": f"mock://{unique}"})
    config = GeneratorConfig(events=60, seed=2, rate=150.0, start=datetime.now(tz=UTC) + timedelta(milliseconds=200))
    assert produce_to_kafka(config, with_registry, topic=topic, realtime=True) == 60

    reader = Serde("transaction", registry_url=f"mock://{unique}", subject=f"{topic}-value")
    messages = read_all(settings, topic, 60, group=f"g-{unique}")
    records = [reader.decode(m.value()) for m in messages]
    assert records == next(generate(config))
    for message, record in zip(messages, records, strict=True):
        assert message.timestamp()[1] >= int(record["event_time"].timestamp() * 1000)


def test_pacer_holds_the_rate_and_catches_up(monkeypatch):
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(sinks_module.time, "sleep", sleep)
    pacer = sinks_module._Pacer(10.0, clock=lambda: now[0])
    assert not pacer.wait(0)
    assert pacer.wait(1)
    assert slept == [pytest.approx(0.1)]
    now[0] += 1.0  # a stall: the next events are overdue and go out without sleeping
    assert not pacer.wait(2)
    assert not pacer.wait(11)
    assert pacer.wait(13)
    assert now[0] == pytest.approx(101.3)
