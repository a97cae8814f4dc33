"""`make demo`, first chapter: Avro transactions through the real broker and back, decoded."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import confluent_kafka
from rich.console import Console
from rich.table import Table
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from services.kafka import Consumer, Producer
from services.serde import Serde
from services.settings import Settings

__all__ = ["run_demo", "sample_transactions"]


def sample_transactions(n: int, seed: int) -> list[dict[str, Any]]:
    """A few plausible card transactions; the full generator arrives with the features stage."""
    rng = random.Random(seed)
    now = datetime.now(tz=UTC).replace(microsecond=0)
    return [
        {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "user_id": f"u{rng.randrange(1000):04d}",
            "merchant_id": f"m{rng.randrange(200):03d}",
            "amount": round(rng.lognormvariate(3.2, 1.0), 2),
            "currency": "EUR",
            "country": rng.choice(["DE", "FR", "NL", "ES", "IT"]),
            "channel": rng.choice(["POS", "ECOM", "ATM", "MOTO"]),
            "event_time": now - timedelta(seconds=n - i),
            "is_fraud": None,
        }
        for i in range(n)
    ]


@retry(
    retry=retry_if_exception_type(confluent_kafka.KafkaException),
    stop=stop_after_delay(15),
    wait=wait_exponential(multiplier=0.05, max=1),
    reraise=True,
)
def _end_offset(consumer: Consumer, topic: str, partition: int) -> int:
    # A freshly created partition answers NOT_LEADER for a moment even after metadata names its leader.
    _, high = consumer.raw.get_watermark_offsets(confluent_kafka.TopicPartition(topic, partition), timeout=5)
    return int(high)


def run_demo(settings: Settings, *, events: int, seed: int, console: Console, timeout_s: float = 30.0) -> None:
    topic = settings.topics.transactions
    serde = Serde("transaction", registry_url=settings.schema_registry_url, subject=f"{topic}-value")
    records = sample_transactions(events, seed)

    # Remember where each partition ends now, so we read back exactly what we send, whatever came before.
    reader = Consumer(settings.kafka, f"streamscore-demo-{uuid.uuid4().hex[:8]}", [], client_suffix="demo")
    meta = reader.raw.list_topics(topic, timeout=10).topics[topic]
    starts = [confluent_kafka.TopicPartition(topic, p, _end_offset(reader, topic, p)) for p in meta.partitions]

    producer = Producer(settings.kafka, client_suffix="demo")
    for record in records:
        producer.send(topic, serde.encode(record), key=record["user_id"])
    producer.flush()
    console.print(f"sent {len(records)} Avro transactions to [bold]{topic}[/] (acknowledged by the broker)")

    reader.raw.assign(starts)
    wanted = {r["event_id"] for r in records}
    table = Table("partition", "offset", "event_id", "user", "merchant", "amount", "channel", "event_time", "bytes")
    deadline = time.monotonic() + timeout_s
    try:
        while wanted and time.monotonic() < deadline:
            for msg in reader.poll_batch(max_messages=500, timeout_s=0.5):
                value = msg.value() or b""
                decoded = serde.decode(value)
                if decoded["event_id"] not in wanted:
                    continue
                wanted.discard(decoded["event_id"])
                table.add_row(
                    str(msg.partition()), str(msg.offset()), decoded["event_id"][:8], decoded["user_id"],
                    decoded["merchant_id"], f"{decoded['amount']:.2f}", decoded["channel"],
                    decoded["event_time"].isoformat(), str(len(value)),
                )  # fmt: skip
    finally:
        reader.close()
    console.print(table)
    if wanted:
        raise RuntimeError(f"{len(wanted)} of {len(records)} events were not read back within {timeout_s}s")
    console.print(f"read back and decoded all {len(records)} events from Kafka")
