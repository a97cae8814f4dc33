"""`make demo`: the whole loop on the local stack, told in chapters, in about six minutes.

1. The stack (Kafka, Redis, Prometheus) and Avro transactions through Kafka and back.
2. History: generated transactions to Kafka (the log the stream processor replays) and to Parquet, with a
   day of warm-up before them (Parquet only) that fills the 24 h windows.
3. Backfill: the same feature definitions over the Parquet history, into Feast's offline tables.
4. Training: Feast's point-in-time training set of the whole history (the ASOF offline store), an MLP
   exported to ONNX, checked, gated, registered in MLflow and promoted to champion.
5. Services: the stream processor catches up on history; an inference worker and the retrainer
   (``retrain-on-drift``) start. Prometheus discovers all three.
6. Live traffic, each transaction behind its score request, with drift injected part-way (amounts, channel
   mix and new merchants shift), watched live through ``streamscore top``: drift reports flag the inputs,
   the retrainer's streak fills, it retrains on the recent window, and the gate compares the candidate
   with the champion on the newest (drifted) rows: promoted, the worker hot-reloads it; rejected, the
   champion serves on.
7. More drifted traffic, scored by whichever champion serves: predictions per model version against the
   labels, and the busiest users' features as Feast's own ``get_online_features`` reads them.
8. The HTML report (throughput, latency, freshness, drift per feature with the retrain marked), then a clean
   stop of the services.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import confluent_kafka
import pandas as pd
from confluent_kafka import KafkaException
from rich.console import Console
from rich.table import Table
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from streamscore.errors import StreamscoreError
from streamscore.kafka import Consumer, Producer, group_lag
from streamscore.serde import Serde
from streamscore.settings import Settings, child_env
from streamscore.stack.supervisor import spawn, stop_all, wait_for_line

__all__ = ["run_avro_roundtrip", "run_demo", "sample_transactions"]


def sample_transactions(n: int, seed: int, *, until: datetime | None = None) -> list[dict[str, Any]]:
    """A few plausible card transactions for the round trip (the full generator is ``streamscore.generator``),
    one a second up to ``until`` (default: now)."""
    rng = random.Random(seed)
    now = (until or datetime.now(tz=UTC)).replace(microsecond=0)
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
    settings: Settings,
    *,
    events: int,
    seed: int,
    console: Console,
    timeout_s: float = 30.0,
    until: datetime | None = None,
) -> None:
    topic = settings.topics.transactions
    serde = Serde("transaction", registry_url=settings.schema_registry_url, subject=f"{topic}-value")
    records = sample_transactions(events, seed, until=until)

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


def read_predictions(settings: Settings, wanted: set[str], timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """The predictions of the ``wanted`` request ids, read back from the predictions topic (latest per id)."""
    serde = Serde("prediction", registry_url=settings.schema_registry_url,
                  subject=f"{settings.topics.predictions}-value")  # fmt: skip
    found: dict[str, dict[str, Any]] = {}
    topics = [settings.topics.predictions]
    with Consumer(settings.kafka, f"streamscore-demo-{uuid.uuid4().hex[:8]}", topics, client_suffix="demo") as reader:
        deadline = time.monotonic() + timeout_s
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for msg in reader.poll_batch(5000, 0.5):
                record = serde.decode(msg.value())
                if record["request_id"] in wanted:
                    found[record["request_id"]] = record
    return found


def show_predictions(settings: Settings, live: pd.DataFrame, console: Console) -> None:
    """Decisions against the labels per model version: what drift did to the old champion, and the new one."""
    frame = live.set_index("event_id")
    predictions = read_predictions(settings, set(frame.index))
    if not predictions:
        raise RuntimeError(f"no prediction of the live transactions on {settings.topics.predictions}")
    scored = frame.loc[list(predictions)].assign(
        version=[predictions[i]["model_version"] for i in predictions],
        decision=[bool(predictions[i]["decision"]) for i in predictions],
        total_ms=[predictions[i]["latency"]["total_ms"] for i in predictions],
    )
    table = Table("model", "traffic", "requests", "flagged", "frauds", "caught", "precision", "recall",
                  "p50 ms", "p99 ms", title="live predictions read back from Kafka, by model version")  # fmt: skip
    for (version, drifted), group in scored.groupby(["version", "drifted"], sort=True):
        fraud, flagged = group["is_fraud"].to_numpy(dtype=bool), group["decision"].to_numpy(dtype=bool)
        caught = int((fraud & flagged).sum())
        table.add_row(
            f"v{version}", "drifted" if drifted else "before drift", f"{len(group):,}", f"{int(flagged.sum()):,}",
            str(int(fraud.sum())), str(caught), f"{caught / max(1, int(flagged.sum())):.2f}",
            f"{caught / max(1, int(fraud.sum())):.2f}", f"{group['total_ms'].median():.0f}",
            f"{group['total_ms'].quantile(0.99):.0f}",
        )  # fmt: skip
    console.print(table)
    missing = len(frame) - len(predictions)
    console.print(f"{len(predictions):,} of {len(frame):,} live requests have a prediction"
                  + (f" ({missing:,} still missing)" if missing else ""))  # fmt: skip


def show_online_features(settings: Settings, live: pd.DataFrame, console: Console) -> None:
    """The busiest live users' features as Feast's own ``get_online_features`` reads what the processor wrote."""
    from streamscore.store import feature_store, quiet_feast

    busiest = [u for u, _ in Counter(live["user_id"]).most_common(3)]
    merchant = Counter(live["merchant_id"]).most_common(1)[0][0]
    store = feature_store(settings)
    with quiet_feast():
        service = store.get_feature_service(settings.training.feature_service)
        rows = store.get_online_features(
            features=service, entity_rows=[{"user_id": u, "merchant_id": merchant} for u in busiest]
        ).to_dict()
    table = Table(f"feature (Feast get_online_features; merchant {merchant})", *busiest)
    for name in sorted(k for k in rows if k not in ("user_id", "merchant_id")):
        table.add_row(name, *("-" if v is None else f"{v:,.4g}" for v in rows[name]))
    console.print(table)


def _watch(
    settings: Settings, console: Console, until: Any, timeout_s: float, png: Path, refresh_s: float = 2.0
) -> bool:
    """``streamscore top`` in the demo's console until ``until()`` is true; False on timeout. The frame with the
    most drift flags is saved as ``png``: the moment the story is about."""
    from rich.live import Live

    from streamscore.monitoring.prom import Prometheus, PrometheusError
    from streamscore.monitoring.render import save_png
    from streamscore.monitoring.top import render, take_snapshot

    deadline = time.monotonic() + timeout_s
    kept: tuple[int, Any] = (-1, None)
    with Prometheus.from_settings(settings) as prom, Live(console=console, auto_refresh=False) as live:
        while time.monotonic() < deadline:
            try:
                snapshot = take_snapshot(prom, settings)
                frame = render(snapshot)
                live.update(frame, refresh=True)
                if len(snapshot.drifted) >= kept[0]:
                    kept = (len(snapshot.drifted), frame)
            except PrometheusError as exc:
                live.update(f"[red]{exc}[/]", refresh=True)
            if until():
                break
            time.sleep(refresh_s)
    if kept[1] is not None:
        save_png(kept[1], png)
    return bool(until())


def _champion_version(settings: Settings) -> int | None:
    from streamscore.models.registry import Registry

    info = Registry(settings).champion()
    return None if info is None else info.version


def run_demo(
    settings: Settings,
    *,
    console: Console,
    history_events: int = 100_000,
    live_events: int = 5_000,
    drifted_events: int = 60_000,
    after_events: int = 10_000,
) -> Path:
    """The story of the module docstring; returns the report's path."""
    from streamscore.features import backfill, load_plans, rules_for
    from streamscore.generator import GeneratorConfig, generate_frame, produce_to_kafka, write_parquet
    from streamscore.kafka import ensure_topics
    from streamscore.retrain import decisions
    from streamscore.stack import Stack
    from streamscore.store import OnlineWriter, apply_definitions

    began = datetime.now(tz=UTC)
    console.rule("1. The stack, and Avro through Kafka")
    for status in Stack(settings).status():
        console.print(f"{status.name} {status.version or ''} at {status.address}: {status.state}")
    # Dated a week back, before the history that follows them on the topic: a partition's clock is its newest
    # event, and five events of today ahead of days of history would make the processor evict the history's
    # cards as idle and dead-letter their events as beyond its state (which is what it should do with them).
    run_avro_roundtrip(settings, events=5, seed=7, console=console, until=began - timedelta(days=7))

    console.rule("2. History: generated transactions to Kafka and Parquet")
    ensure_topics(settings)
    apply_definitions(settings)
    now = datetime.now(tz=UTC).replace(microsecond=0)
    # One stream of the same cards and merchants: a day of warm-up from noon UTC six days ago (Parquet only: it
    # fills the 24 h windows, so the history's first transactions have whole ones), 48 h of history from noon
    # five days ago, then the live part from the third day's noon: a quiet stretch, the drift (amounts x2.5, 40%
    # of purchases move online, new merchants) and more drifted traffic after the retrain. Traffic follows a
    # daily cycle, so the time of day is fixed: every training and test window falls in the day, when there are
    # frauds to learn from. The live part is held back until the model serves, then replayed hundreds of times
    # faster than event time.
    warmup = timedelta(hours=24)
    total = history_events * 3 // 2 + live_events + drifted_events + after_events  # the warm-up: ~half the 48 h
    rate = history_events / (48 * 3600)
    start = now.replace(hour=12, minute=0, second=0) - timedelta(days=5) - warmup
    history_from = start + warmup
    undrifted = GeneratorConfig(events=total, rate=rate, seed=1, start=start, users=2000, merchants=300,
                                fraud_rate=0.01)  # fmt: skip
    times = generate_frame(undrifted)["event_time"].sort_values()
    first = int((times < history_from).sum())  # the history's first transaction
    split = times.iloc[first + history_events].to_pydatetime()
    drift_at = times.iloc[first + history_events + live_events].to_pydatetime()
    retrain_split = times.iloc[first + history_events + live_events + drifted_events].to_pydatetime()
    final_split = times.iloc[total - after_events // 4].to_pydatetime()
    stream = GeneratorConfig(events=total, rate=rate, seed=1, start=start, users=2000, merchants=300,
                             fraud_rate=0.01, drift_at=drift_at)  # fmt: skip
    frame = generate_frame(stream)
    live_frame = frame[frame["event_time"] >= split].assign(drifted=lambda f: f["event_time"] >= drift_at)
    parquet = settings.data_dir / "demo" / "stream.parquet"
    parquet.parent.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    write_parquet(stream, parquet)
    sent = produce_to_kafka(stream, settings, where=lambda r: history_from <= r["event_time"] < split)
    console.print(f"{sent:,} events from {history_from:%Y-%m-%d %H:%M} to {split:%Y-%m-%d %H:%M} UTC → Kafka; "
                  f"the whole stream, with {first:,} events of warm-up the day before → {parquet} "
                  f"({time.perf_counter() - clock:.1f}s)")  # fmt: skip

    console.rule("3. Backfill from the same Feast definitions")
    plans = load_plans(settings)
    writer = OnlineWriter(settings)

    def online(plan: Any, ids: list[str], values: Any, event_ms: Any) -> None:
        writer.write(plan.name, ids, {n: values[:, j] for j, n in enumerate(plan.feature_names)}, event_ms)

    clock = time.perf_counter()
    report = backfill(
        parquet, plans, settings.data_dir / "offline", start=stream.start, end=split,
        rules=rules_for(settings, plans), online=online,
    )  # fmt: skip
    elapsed = time.perf_counter() - clock
    for view in report.views:
        console.print(f"{view.view}: {view.rows:,} rows for {view.entities:,} entities → {view.path}")
    console.print(f"{report.accepted:,} of {report.events_read:,} events accepted, {elapsed:.1f}s "
                  f"({report.events_read / elapsed:,.0f} events/s); online store materialized")  # fmt: skip

    console.rule("4. Train, check and register the model")
    from streamscore.training import train

    # The whole history through the ASOF offline store (one get_historical_features call). Not the warm-up: its
    # 24 h windows are still filling, which live traffic never sees (and the drift monitor would rightly flag,
    # measured against a reference that includes them).
    console.print(f"training on the whole history, {history_from:%Y-%m-%d %H:%M} to {split:%Y-%m-%d %H:%M} UTC "
                  f"(the warm-up day before it only fills the 24 h windows)")  # fmt: skip
    result = train(settings, events=parquet, start=history_from, end=split, kind="mlp", seed=0)
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
    first_champion = _champion_version(settings)

    console.rule("5. Stream processor, inference worker and retrainer")
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Faster than production defaults, so the story fits in minutes: a drift report every 3 s, and a retrain
    # after four drifted ones in a row, on the last 48 h of event time: the drifted traffic, sent all at once, is
    # in Kafka by the time the reports about it trigger the retrain (and traffic goes on while it trains). 48 h,
    # as much as the champion learnt from; whether the candidate beats it on the drifted test rows is the gate's
    # call, and with a champion trained on the whole history it often does not.
    settings = settings.model_copy(
        update={
            "drift": settings.drift.model_copy(update={"interval_s": 3.0}),
            "retrain": settings.retrain.model_copy(
                update={"min_reports": 4, "min_drifted_features": 5, "window_h": 48.0}
            ),
        }
    )
    env = child_env(settings)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        log = logs / "features-demo.log"
        procs["features"] = spawn(["features", "run"], env, log)
        took = _wait_caught_up(settings, procs["features"], log, timeout_s=300)
        console.print(f"processor caught up on {sent:,} historical events in {took:.0f}s (log: {log})")
        for name, args, ready in (("inference", ["inference", "run"], "serving"),
                                  ("retrain", ["retrain", "run"], "watching")):  # fmt: skip
            log = logs / f"{name}-demo.log"
            offset = log.stat().st_size if log.exists() else 0
            procs[name] = spawn(args, env, log)
            wait_for_line(procs[name], log, offset, ready, timeout_s=120)
            console.print(f"{name}: {' '.join(args)} running (log: {log})")
        console.print(f"Prometheus at {settings.monitoring.prometheus_url} scrapes all three "
                      "(`streamscore top` shows what it sees)")  # fmt: skip

        console.rule("6. Live traffic with drift injected; `streamscore top` while it runs")
        # Each score request just before its transaction, as a card network sends them; the processor keeps
        # up, so a request sees its card's features as of just before it.
        feed = threading.Thread(
            target=lambda: (
                produce_to_kafka(stream, settings, requests=True, wall_rate=500,
                                 where=lambda r: split <= r["event_time"] < drift_at),
                produce_to_kafka(stream, settings, requests=True,
                                 where=lambda r: drift_at <= r["event_time"] < retrain_split),
                produce_to_kafka(stream, settings, requests=True, wall_rate=150,
                                 where=lambda r: retrain_split <= r["event_time"] < final_split),
            ),
            daemon=True,
        )  # fmt: skip
        feed.start()
        console.print(f"{live_events:,} live events at 500/s; then the drift: {drifted_events:,} drifted events from "
                      f"{drift_at:%H:%M} event time as fast as Kafka takes them, and more at 150/s while the "
                      "retrainer works")  # fmt: skip

        def settled() -> bool:
            try:
                done = [d for d in decisions(settings, began) if d.kind != "triggered"]
            except StreamscoreError:  # the registry busy (sqlite) or down: ask again at the next refresh
                return False
            return not feed.is_alive() and bool(done)

        top_png = settings.data_dir / "reports" / f"top-{began:%Y%m%dT%H%M%S}.png"
        if not _watch(settings, console, settled, timeout_s=360, png=top_png):
            console.print("[yellow]no retrain finished within 6 minutes; see the retrain log[/]")
        feed.join()
        table = Table("time (UTC)", "step", "version", "detail", title="what the retrainer decided (MLflow)")
        for d in decisions(settings, began):
            table.add_row(f"{d.time:%H:%M:%S}", d.kind, "" if d.version is None else f"v{d.version}", d.detail)
        console.print(table)
        champion = _champion_version(settings)
        console.print(f"champion: v{first_champion} → v{champion}" if champion != first_champion
                      else f"champion still v{champion}")  # fmt: skip

        console.rule("7. More drifted traffic, scored by the champion now serving")
        time.sleep(settings.inference.reload_interval_s + 1)  # the worker's next champion check
        produce_to_kafka(stream, settings, requests=True, wall_rate=500, where=lambda r: r["event_time"] >= final_split)
        _wait_caught_up(settings, procs["inference"], logs / "inference-demo.log", timeout_s=120, inference=True)
        show_predictions(settings, live_frame, console)
        show_online_features(settings, live_frame, console)
    finally:
        stop_all(
            procs, on_kill=lambda name: console.print(f"[yellow]{name} did not stop within 60s of SIGTERM: killed[/]")
        )

    console.rule("8. Report")
    from streamscore.monitoring.report import build_report

    path = build_report(settings, settings.data_dir / "reports" / f"demo-{began:%Y%m%dT%H%M%S}.html",
                        start=began, end=datetime.now(tz=UTC))  # fmt: skip
    console.print(f"services stopped; report: [bold]{path}[/]")
    return path
