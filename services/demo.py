"""`make demo`: the pipeline so far, end to end on the local stack, told in chapters.

1. Avro transactions through Kafka and back, decoded.
2. History: generated transactions to Kafka (the log the stream processor replays) and to Parquet.
3. Backfill: the same feature definitions over the Parquet history, into Feast's offline tables.
4. Training: Feast's point-in-time training set, an MLP exported to ONNX, checked, gated, registered in
   MLflow and promoted to champion.
5. The stream processor starts, catches up on history and takes live events; a few users' features
   are read back through Feast's own ``get_online_features``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaException
from rich.console import Console
from rich.table import Table
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from services.kafka import Consumer, Producer, group_lag
from services.serde import Serde
from services.settings import Settings

__all__ = ["run_avro_roundtrip", "run_demo", "sample_transactions"]


def sample_transactions(n: int, seed: int) -> list[dict[str, Any]]:
    """A few plausible card transactions for the round trip (the full generator is ``services.generator``)."""
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


def run_avro_roundtrip(
    settings: Settings, *, events: int, seed: int, console: Console, timeout_s: float = 30.0
) -> None:
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


def _wait_caught_up(settings: Settings, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> float:
    topics = [settings.topics.transactions, settings.topics.transactions_by_merchant]
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"the feature processor exited ({proc.returncode}); {log}:\n{tail}")
        try:
            if group_lag(settings.kafka, settings.features.group_id, topics) == 0:
                return time.monotonic() - started
        except KafkaException:
            pass  # group coordinator still loading
        time.sleep(1.0)
    raise RuntimeError(f"the feature processor did not catch up within {timeout_s:.0f}s; see {log}")


def run_demo(settings: Settings, *, console: Console, history_events: int = 100_000, live_events: int = 10_000) -> None:
    from services.features import backfill, load_plans, rules_for
    from services.generator import GeneratorConfig, produce_to_kafka, write_parquet
    from services.kafka import ensure_topics
    from services.store import OnlineWriter, apply_definitions, feature_store, quiet_feast, settings_env

    console.rule("1. Avro through Kafka")
    run_avro_roundtrip(settings, events=5, seed=7, console=console)

    console.rule("2. History: generated transactions to Kafka and Parquet")
    ensure_topics(settings)
    apply_definitions(settings)
    now = datetime.now(tz=UTC).replace(microsecond=0)
    common: dict[str, Any] = {"users": 2000, "merchants": 300, "fraud_rate": 0.01}
    # Spread over about 40 h of the last two days, so the 24 h windows of the live events reach into it.
    rate = history_events / (40 * 3600)
    history = GeneratorConfig(events=history_events, rate=rate, seed=1, start=now - timedelta(days=2), **common)
    parquet = settings.data_dir / "demo" / "history.parquet"
    parquet.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    write_parquet(history, parquet)
    sent = produce_to_kafka(history, settings)
    console.print(f"{sent:,} events from {history.start:%Y-%m-%d %H:%M} UTC → {parquet} and Kafka "
                  f"({time.perf_counter() - started:.1f}s)")  # fmt: skip

    console.rule("3. Backfill from the same Feast definitions")
    plans = load_plans(settings)
    writer = OnlineWriter(settings)

    def online(plan: Any, ids: list[str], values: Any, event_ms: Any) -> None:
        writer.write(plan.name, ids, {n: values[:, j] for j, n in enumerate(plan.feature_names)}, event_ms)

    started = time.perf_counter()
    report = backfill(
        parquet, plans, settings.data_dir / "offline", start=history.start, end=now,
        rules=rules_for(settings, plans), online=online,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    for view in report.views:
        console.print(f"{view.view}: {view.rows:,} rows for {view.entities:,} entities → {view.path}")
    console.print(f"{report.accepted:,} of {report.events_read:,} events accepted, {elapsed:.1f}s "
                  f"({report.events_read / elapsed:,.0f} events/s); online store materialized")  # fmt: skip

    console.rule("4. Train, check and register the model")
    from services.training import train

    result = train(settings, events=parquet, start=history.start, end=now, kind="mlp", seed=0)
    gate = result.gate
    console.print(
        f"{sum(result.rows.values()):,} labelled rows ({result.positives['train']:,} frauds in training); test "
        f"ROC-AUC {gate.candidate['roc_auc']:.3f}, PR-AUC {gate.candidate['pr_auc']:.3f} (baseline "
        f"{gate.baseline['pr_auc']:.3f}); ONNX vs source max |diff| {result.max_abs_diff:.1e}"
    )
    console.print(
        f"{result.card.model_name} v{result.version} sha256 {result.sha256[:16]}… "
        + ("promoted to champion" if result.promoted else "registered as challenger: " + "; ".join(gate.reasons))
        + f" ({sum(result.seconds.values()):.1f}s; `streamscore models list` shows the registry)"
    )

    console.rule("5. Stream processor: history replay, then live events")
    log = settings.data_dir / "logs" / "features-demo.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STREAMSCORE_")}
    env.update(settings_env(settings))
    env["STREAMSCORE_METRICS_PORT"] = "0"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services", "features", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        took = _wait_caught_up(settings, proc, log, timeout_s=300)
        console.print(f"processor caught up on {history_events:,} historical events in {took:.0f}s (log: {log})")
        live = GeneratorConfig(events=live_events, rate=200.0, seed=2, start=datetime.now(tz=UTC) - timedelta(
            seconds=live_events / 200.0), **common)  # fmt: skip
        produce_to_kafka(live, settings)
        took = _wait_caught_up(settings, proc, log, timeout_s=300)
        console.print(f"{live_events:,} live events processed {took:.1f}s after they were sent")
    finally:
        proc.terminate()
        proc.wait(60)

    from services.generator import generate_frame

    live_frame = generate_frame(live)
    busiest = [u for u, _ in Counter(live_frame["user_id"]).most_common(3)]
    merchant = Counter(live_frame["merchant_id"]).most_common(1)[0][0]
    store = feature_store(settings)
    with quiet_feast():
        service = store.get_feature_service("fraud_model_v1")
        rows = store.get_online_features(
            features=service, entity_rows=[{"user_id": u, "merchant_id": merchant} for u in busiest]
        ).to_dict()
    table = Table(f"feature (Feast get_online_features; merchant {merchant})", *busiest)
    for name in sorted(k for k in rows if k not in ("user_id", "merchant_id")):
        table.add_row(name, *("-" if v is None else f"{v:,.4g}" for v in rows[name]))
    console.print(table)
