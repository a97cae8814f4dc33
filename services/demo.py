"""`make demo`: the pipeline so far, end to end on the local stack, told in chapters.

1. Avro transactions through Kafka and back, decoded.
2. History: generated transactions to Kafka (the log the stream processor replays) and to Parquet.
3. Backfill: the same feature definitions over the Parquet history, into Feast's offline tables.
4. Training: Feast's point-in-time training set, an MLP exported to ONNX, checked, gated, registered in
   MLflow and promoted to champion.
5. The stream processor starts and catches up on history; an inference worker starts; live events arrive,
   each behind its score request. Predictions (decisions against the labels, latency) and the worker's
   drift report are read back from Kafka; a few users' features are read back through Feast's own
   ``get_online_features``.
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
import numpy as np
import pandas as pd
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


def _wait_caught_up(
    settings: Settings, proc: subprocess.Popen[bytes], log: Path, timeout_s: float, *, inference: bool = False
) -> float:
    """Seconds until the feature processor's (or the inference workers') group has committed everything."""
    if inference:
        what, group, topics = "inference worker", settings.inference.group_id, [settings.topics.score_requests]
    else:
        what, group = "feature processor", settings.features.group_id
        topics = [settings.topics.transactions, settings.topics.transactions_by_merchant]
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"the {what} exited ({proc.returncode}); {log}:\n{tail}")
        try:
            if group_lag(settings.kafka, group, topics) == 0:
                return time.monotonic() - started
        except KafkaException:
            pass  # group coordinator still loading
        time.sleep(0.5)
    raise RuntimeError(f"the {what} did not catch up within {timeout_s:.0f}s; see {log}")


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _wait_for_line(proc: subprocess.Popen[bytes], log: Path, offset: int, text: str, timeout_s: float) -> None:
    """Until ``text`` appears in ``log`` after ``offset`` (the log's size when the process started)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the process logging to {log} exited with {proc.returncode}")
        with log.open("rb") as f:
            f.seek(offset)
            if text.encode() in f.read():
                return
        time.sleep(0.2)
    raise RuntimeError(f"no {text!r} in {log} within {timeout_s:.0f}s")


def show_predictions(settings: Settings, live: pd.DataFrame, console: Console) -> None:
    """The live transactions' predictions, read back from Kafka: decisions against the labels, latency, drift."""
    frame = live.set_index("event_id")
    url = settings.schema_registry_url
    serde = Serde("prediction", registry_url=url, subject=f"{settings.topics.predictions}-value")
    drift = Serde("drift_report", registry_url=url, subject=f"{settings.topics.drift}-value")
    predictions: dict[str, dict[str, Any]] = {}
    reports: list[dict[str, Any]] = []
    topics = [settings.topics.predictions, settings.topics.drift]
    with Consumer(settings.kafka, f"streamscore-demo-{uuid.uuid4().hex[:8]}", topics, client_suffix="demo") as reader:
        deadline = time.monotonic() + 30
        while len(predictions) < len(frame) and time.monotonic() < deadline:
            for msg in reader.poll_batch(2000, 0.5):
                if msg.topic() == settings.topics.drift:
                    reports.append(drift.decode(msg.value()))
                    continue
                record = serde.decode(msg.value())
                if record["request_id"] in frame.index:
                    predictions[record["request_id"]] = record
    if not predictions:
        raise RuntimeError(f"no prediction of the live transactions on {settings.topics.predictions}")
    scored = frame.loc[list(predictions)]
    decision = np.array([predictions[i]["decision"] for i in scored.index])
    fraud = scored["is_fraud"].to_numpy(dtype=bool)
    total = np.array([predictions[i]["latency"]["total_ms"] for i in scored.index])
    console.print(
        f"{len(predictions):,} predictions read back from [bold]{settings.topics.predictions}[/]: "
        f"{int(decision.sum()):,} flagged, catching {int((decision & fraud).sum())} of {int(fraud.sum())} frauds; "
        f"end-to-end latency p50 {np.median(total):.0f} ms, p99 {np.quantile(total, 0.99):.0f} ms "
        "(sent at 500/s)"
    )
    table = Table("request", "user", "amount", "channel", "score", "decision", "label", "missing", "model")
    top = sorted(predictions.values(), key=lambda r: -r["score"])[:6]
    for r in top:
        row = frame.loc[r["request_id"]]
        table.add_row(
            r["request_id"][:8], r["user_id"], f"{row['amount']:.2f}", row["channel"], f"{r['score']:.3f}",
            "block" if r["decision"] else "allow", "fraud" if row["is_fraud"] else "-",
            str(len(r["missing_features"])), f"v{r['model_version']}",
        )  # fmt: skip
    console.print(table)
    if reports:
        last = reports[-1]
        flagged = sorted({f"{f['feature']} ({f['statistic']})" for f in last["features"] if f["drifted"]})
        console.print(
            f"latest drift report of {len(reports)} on [bold]{settings.topics.drift}[/]: {last['count']:,} predictions "
            f"of v{last['model_version']}; " + (f"drifted: {', '.join(flagged)}" if flagged else "no input drifted")
        )


def run_demo(settings: Settings, *, console: Console, history_events: int = 100_000, live_events: int = 10_000) -> None:
    from services.features import backfill, load_plans, rules_for
    from services.generator import GeneratorConfig, generate_frame, produce_to_kafka, write_parquet
    from services.kafka import ensure_topics
    from services.store import OnlineWriter, apply_definitions, feature_store, quiet_feast, settings_env

    console.rule("1. Avro through Kafka")
    run_avro_roundtrip(settings, events=5, seed=7, console=console)

    console.rule("2. History: generated transactions to Kafka and Parquet")
    ensure_topics(settings)
    apply_definitions(settings)
    now = datetime.now(tz=UTC).replace(microsecond=0)
    # One stream of the same cards and merchants: ~40 h of history from two days ago, then the live part
    # (the next ~4 h of event time). The live part is held back until the model serves.
    rate = history_events / (40 * 3600)
    stream = GeneratorConfig(events=history_events + live_events, rate=rate, seed=1, start=now - timedelta(days=2),
                             users=2000, merchants=300, fraud_rate=0.01)  # fmt: skip
    frame = generate_frame(stream)
    split = frame["event_time"].sort_values().iloc[history_events].to_pydatetime()
    live_frame = frame[frame["event_time"] >= split]
    parquet = settings.data_dir / "demo" / "stream.parquet"
    parquet.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    write_parquet(stream, parquet)
    sent = produce_to_kafka(stream, settings, where=lambda r: r["event_time"] < split)
    console.print(f"{sent:,} events from {stream.start:%Y-%m-%d %H:%M} to {split:%Y-%m-%d %H:%M} UTC → Kafka; "
                  f"the whole stream → {parquet} ({time.perf_counter() - started:.1f}s)")  # fmt: skip

    console.rule("3. Backfill from the same Feast definitions")
    plans = load_plans(settings)
    writer = OnlineWriter(settings)

    def online(plan: Any, ids: list[str], values: Any, event_ms: Any) -> None:
        writer.write(plan.name, ids, {n: values[:, j] for j, n in enumerate(plan.feature_names)}, event_ms)

    started = time.perf_counter()
    report = backfill(
        parquet, plans, settings.data_dir / "offline", start=stream.start, end=split,
        rules=rules_for(settings, plans), online=online,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    for view in report.views:
        console.print(f"{view.view}: {view.rows:,} rows for {view.entities:,} entities → {view.path}")
    console.print(f"{report.accepted:,} of {report.events_read:,} events accepted, {elapsed:.1f}s "
                  f"({report.events_read / elapsed:,.0f} events/s); online store materialized")  # fmt: skip

    console.rule("4. Train, check and register the model")
    from services.training import train

    # The whole history, the first day's still-filling 24 h windows included: starting a day in would avoid
    # that warm-up but leave about a fifth of the frauds to learn from.
    result = train(settings, events=parquet, start=stream.start, end=split, kind="mlp", seed=0)
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

    console.rule("5. Stream processor and inference worker: history replay, then live traffic")
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STREAMSCORE_")}
    env.update(settings_env(settings))
    env["STREAMSCORE_METRICS_PORT"] = "0"
    log = logs / "features-demo.log"
    worker_log = logs / "inference-demo.log"
    procs = [_spawn(["features", "run"], env, log)]
    try:
        took = _wait_caught_up(settings, procs[0], log, timeout_s=300)
        console.print(f"processor caught up on {sent:,} historical events in {took:.0f}s (log: {log})")
        offset = worker_log.stat().st_size if worker_log.exists() else 0
        procs.append(_spawn(["inference", "run"], env, worker_log))
        _wait_for_line(procs[1], worker_log, offset, "serving", timeout_s=120)
        console.print(f"inference worker serving the champion (log: {worker_log})")
        started = time.monotonic()
        # 500 a second of wall time, each score request just before its transaction, as a card network sends
        # them: the processor keeps up, so a request sees its card's features as of just before it.
        produce_to_kafka(stream, settings, requests=True, wall_rate=500, where=lambda r: r["event_time"] >= split)
        took = _wait_caught_up(settings, procs[0], log, timeout_s=300)
        console.print(f"{len(live_frame):,} live events processed {took:.1f}s after the last was sent")
        _wait_caught_up(settings, procs[1], worker_log, timeout_s=300, inference=True)
        took = time.monotonic() - started
        console.print(f"{len(live_frame):,} score requests answered {took:.1f}s after the first was sent")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
    show_predictions(settings, live_frame, console)

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
