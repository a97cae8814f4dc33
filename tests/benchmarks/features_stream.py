"""Stream paths of the feature stage: Kafka consume ceilings, bare faust, the naive faust design, the real
processor (one and two processes) and its freshness at a steady rate. Every process here is a child of the
benchmark or the benchmark itself, against the benchmark's own stack."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from streamscore.settings import Settings
from tests.benchmarks.features_common import (
    Child,
    Traffic,
    cpu_seconds,
    processor,
    read_json,
    say,
    scrape,
)
from tests.benchmarks.features_common import sample as metric

INGEST, REKEY = "features-ingest", "features-rekey"


# --- 1. confluent-kafka ceilings ---------------------------------------------------------------------------


def consume_rate(settings: Settings, topic: str, n: int, *, decode: bool) -> float:
    """Messages/s of one confluent-kafka consumer reading ``n`` messages of every partition from offset 0,
    timed from the end of the first batch (connection and first fetch excluded)."""
    from confluent_kafka import Consumer, TopicPartition

    from streamscore.kafka import consumer_config
    from streamscore.serde import Serde

    serde = Serde("transaction")
    consumer = Consumer(consumer_config(settings.kafka, f"bench-ceiling-{time.time_ns()}"))
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        count, first_n, started = 0, 0, 0.0
        deadline = time.monotonic() + 120
        while count < n and time.monotonic() < deadline:
            batch = consumer.consume(10_000, 1.0)
            if not batch:
                continue
            if decode:
                for m in batch:
                    if m.error() is None:
                        serde.decode(m.value())
            if count == 0:
                first_n, started = len(batch), time.perf_counter()
            count += len(batch)
        return (count - first_n) / (time.perf_counter() - started)
    finally:
        consumer.close()


# --- 2 and 3. faust children -------------------------------------------------------------------------------


@dataclass
class FaustResult:
    rate: float
    events: int
    seconds: float
    startup_s: float
    split: dict[str, float] = field(default_factory=dict)  # naive: seconds per part of the measured events


def faust_child(
    mode: str, settings: Settings, workdir: Path, *, target: int, max_steady_s: float, timeout_s: float = 90.0
) -> FaustResult:
    """Run ``faust_workers MODE`` until it has seen ``target`` events or ran ``max_steady_s`` past its first."""
    stats = workdir / f"{mode}.json"
    child = Child(
        ["-m", "tests.benchmarks.faust_workers", mode], settings, workdir, workdir / f"{mode}.log",
        {"BENCH_STATS": str(stats)},
    )  # fmt: skip
    started = time.time()
    try:
        while time.time() - started < timeout_s:
            child.check()
            data = read_json(stats)
            if data and (data["n"] >= target or time.time() - data["t_first"] >= max_steady_s):
                break
            time.sleep(0.2)
        time.sleep(0.3)  # the child writes its stats at most every 0.2 s
        data = read_json(stats)
        if not data:
            raise RuntimeError(f"faust {mode} worker saw no event in {timeout_s}s:\n{child.tail()}")
    finally:
        child.stop(10)
    seconds = data["t_last"] - data["t_first"]
    events = data["n"] - data["n_first"]
    split = {k[2:]: v for k, v in data.items() if k.startswith("s_")}
    return FaustResult(events / seconds if seconds > 0 else 0.0, events, seconds, data["t_first"] - started, split)


# --- 4. the processor --------------------------------------------------------------------------------------


@dataclass
class ProcessorResult:
    processes: int
    events: int
    rate_ingest: float  # transactions/s through the ingest stage
    rate_full: float  # transactions/s until the rekey stage applied every forwarded event too
    seconds: float
    startup_s: float
    caught_up_s: float | None  # first event to committed lag 0 (includes the snapshot interval)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process over the measured window
    stop_s: float = 0.0
    stopped_cleanly: bool = True
    batches: float = 0.0


def _counters(ports: list[int]) -> tuple[float, float, float, list[float]]:
    """Summed over processes: ingest messages in, ingest applied, rekey applied; and ingest in per process."""
    scraped = [scrape(p) for p in ports]
    per = [metric(m, "streamscore_features_events_in_total", stage=INGEST) for m in scraped]
    applied = sum(metric(m, "streamscore_features_events_applied_total", stage=INGEST) for m in scraped)
    rekeyed = sum(metric(m, "streamscore_features_events_applied_total", stage=REKEY) for m in scraped)
    return sum(per), applied, rekeyed, per


def run_processors(
    settings_list: list[Settings],
    workdir: Path,
    total: int,
    stack_pids: dict[str, int],
    *,
    timeout_s: float = 180.0,
) -> ProcessorResult:
    """Start one processor per settings (same group), time the steady part from the moment every process has
    applied a batch until all ``total`` transactions went through both stages (Prometheus counters)."""
    from streamscore.kafka import group_lag

    procs = [processor(s, workdir / f"proc-{i}", workdir / f"proc-{i}.log") for i, s in enumerate(settings_list)]
    ports = [s.metrics_port for s in settings_list]
    s0 = settings_list[0]
    launched = time.time()
    t_start: float | None = None
    n_start = 0.0
    t_ingest: float | None = None
    cpu0: dict[str, float] = {}
    try:
        while True:
            if time.time() - launched > timeout_s:
                raise RuntimeError(
                    f"processors not done after {timeout_s}s: {_counters(ports)[:3]}\n" + procs[0].tail(15)
                )
            for p in procs:
                p.check()
            n_in, applied, rekeyed, per = _counters(ports)
            now = time.time()
            if t_start is None and all(x > 0 for x in per):
                t_start, n_start = now, n_in
                cpu0 = _cpu(procs, stack_pids)
            if t_start is not None and t_ingest is None and n_in >= total:
                t_ingest = now
            if t_start is not None and n_in >= total and rekeyed >= applied:
                t_end = now
                cpu1 = _cpu(procs, stack_pids)
                break
            time.sleep(0.1)
        caught_up: float | None = None
        topics = [s0.topics.transactions, s0.topics.transactions_by_merchant]
        while time.time() - t_start < 60:
            try:
                if group_lag(s0.kafka, s0.features.group_id, topics) == 0:
                    caught_up = time.time() - t_start
                    break
            except Exception:  # the coordinator is still loading: ask again
                pass
            time.sleep(0.25)
        batches = sum(metric(scrape(p), "streamscore_features_batch_size_count", stage=INGEST) for p in ports)
    finally:
        stop_started = time.time()
        codes = [p.stop(10) for p in procs]
        stop_s = time.time() - stop_started
    assert t_ingest is not None
    done = total - n_start
    return ProcessorResult(
        processes=len(procs),
        events=total,
        rate_ingest=done / (t_ingest - t_start),
        rate_full=done / (t_end - t_start),
        seconds=t_end - t_start,
        startup_s=t_start - launched,
        caught_up_s=caught_up,
        cpu={k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1},
        stop_s=stop_s,
        stopped_cleanly=all(c == 0 for c in codes),
        batches=batches,
    )


def _cpu(procs: list[Child], stack_pids: dict[str, int]) -> dict[str, float]:
    out = {f"processor {i + 1}": cpu_seconds(p.proc.pid) for i, p in enumerate(procs)}
    out.update({name: cpu_seconds(pid) for name, pid in stack_pids.items()})
    return out


# --- 6. freshness ------------------------------------------------------------------------------------------


@dataclass
class FreshnessResult:
    rate: float
    seconds: float
    sent: int
    buckets: dict[str, list[tuple[float, float]]]  # stage -> [(upper bound, delta count)]
    e2e_ms: list[float]
    within_ms: int
    batches: float
    checkpoints: float  # checkpoint rounds in the paced window
    checkpoint_s: float  # their total time (write, acks, online repair), all of it under the stages' lock
    gc_pauses: float  # full (generation 2) garbage collections in the paced window
    gc_s: float  # their total time, every thread stopped


def _freshness_buckets(m: Any, stage: str) -> list[tuple[float, float]]:
    out = []
    for (name, labels), value in (m or {}).items():
        if name == "streamscore_features_freshness_seconds_bucket" and dict(labels).get("stage") == stage:
            out.append((float(dict(labels)["le"]), value))
    return sorted(out)


def quantile(buckets: list[tuple[float, float]], q: float) -> tuple[float, float, float]:
    """(lower bound, upper bound, linear interpolation) of the bucket holding quantile ``q`` of a cumulative
    histogram's deltas."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return (float("nan"),) * 3
    rank = q * total
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lo_bound, bound, lo_bound
            frac = (rank - lo_count) / (count - lo_count) if count > lo_count else 1.0
            return lo_bound, bound, lo_bound + frac * (bound - lo_bound)
        lo_bound, lo_count = bound, count
    return lo_bound, float("inf"), lo_bound


def freshness(
    settings: Settings, workdir: Path, records: list[dict[str, Any]], *, rate: float, seconds: float
) -> FreshnessResult:
    """Send ``records`` at ``rate``/s for ``seconds`` with event_time = send time, to a running processor; read
    its freshness histogram before/after; meanwhile time sentinel events (a new user each) from send to
    their entity appearing in Redis."""
    import redis

    from streamscore.kafka import Producer
    from streamscore.serde import Serde
    from streamscore.store import PROJECT
    from streamscore.store.layout import redis_keys

    proc = processor(settings, workdir / "proc", workdir / "proc.log")
    serde = Serde("transaction")
    producer = Producer(settings.kafka, client_suffix="bench-pacer")
    topic = settings.topics.transactions
    port = settings.metrics_port
    client = redis.Redis.from_url(settings.redis.url)
    try:
        # Warm up: a second's worth of events, until the processor applied them (partitions assigned, JIT
        # caches loaded, connections open).
        deadline = time.time() + 90
        while scrape(port) is None:
            proc.check()
            if time.time() > deadline:
                raise RuntimeError(f"processor metrics never came up:\n{proc.tail()}")
            time.sleep(0.2)
        warm = records[: int(rate)]
        for r in warm:
            r = dict(r, event_time=datetime.now(tz=UTC))
            producer.send(topic, serde.encode(r), key=r["user_id"])
        producer.flush()
        while metric(scrape(port), "streamscore_features_events_in_total", stage=INGEST) < len(warm):
            proc.check()
            if time.time() > deadline:
                raise RuntimeError(f"processor did not take the warm-up events:\n{proc.tail()}")
            time.sleep(0.1)
        time.sleep(1.0)
        before = scrape(port)
        batches0 = metric(before, "streamscore_features_batch_size_count", stage=INGEST)

        pending: queue.Queue[tuple[bytes, float] | None] = queue.Queue()
        e2e: list[float] = []

        def probe() -> None:
            waiting: list[tuple[bytes, float]] = []
            done = False
            while not done or waiting:
                try:
                    while True:
                        item = pending.get_nowait()
                        if item is None:
                            done = True
                            break
                        waiting.append(item)
                except queue.Empty:
                    pass
                now = time.perf_counter()
                still = []
                for key, sent_at in waiting:
                    if client.exists(key):
                        e2e.append((now - sent_at) * 1000)
                    elif now - sent_at < 10:
                        still.append((key, sent_at))
                waiting = still
                time.sleep(0.001)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        say(f"freshness: sending {rate:,.0f} events/s for {seconds:.0f} s")
        n_total = int(rate * seconds)
        started = time.perf_counter()
        sent = 0
        next_sentinel = started
        sentinel = 0
        source = records[len(warm) :]
        while sent < n_total:
            now = time.perf_counter()
            due = min(n_total, int((now - started) * rate) + 1)
            while sent < due:
                r = dict(source[sent % len(source)], event_time=datetime.now(tz=UTC))
                r["event_id"] = f"{r['event_id'][:24]}{sent:012d}"
                producer.send(topic, serde.encode(r), key=r["user_id"])
                sent += 1
            if now >= next_sentinel:
                user = f"sentinel-{sentinel}"
                r = dict(source[0], user_id=user, event_id=f"sentinel-{sentinel}", event_time=datetime.now(tz=UTC))
                producer.send(topic, serde.encode(r), key=user)
                pending.put((bytes(redis_keys("user_id", [user], PROJECT)[0]), time.perf_counter()))
                sentinel += 1
                next_sentinel += 0.25
            time.sleep(0.001)
        elapsed = time.perf_counter() - started
        producer.flush()
        expected = len(warm) + sent + sentinel
        deadline = time.time() + 60
        while metric(scrape(port), "streamscore_features_events_in_total", stage=INGEST) < expected:
            proc.check()
            if time.time() > deadline:
                raise RuntimeError(f"processor fell behind at {rate}/s:\n{proc.tail()}")
            time.sleep(0.1)
        time.sleep(0.5)
        pending.put(None)
        prober.join(15)
        after = scrape(port)
        buckets = {}
        for stage in (INGEST, REKEY):
            b0 = dict(_freshness_buckets(before, stage))
            buckets[stage] = [(le, c - b0.get(le, 0.0)) for le, c in _freshness_buckets(after, stage)]
        batches = metric(after, "streamscore_features_batch_size_count", stage=INGEST) - batches0
        rounds = {
            part: metric(after, f"streamscore_features_checkpoint_seconds_{part}")
            - metric(before, f"streamscore_features_checkpoint_seconds_{part}")
            for part in ("count", "sum")
        }
        gc = {
            part: metric(after, f"streamscore_gc_pause_seconds_{part}", generation="2")
            - metric(before, f"streamscore_gc_pause_seconds_{part}", generation="2")
            for part in ("count", "sum")
        }
    finally:
        proc.stop(10)
        client.close()
    return FreshnessResult(
        rate=sent / elapsed,
        seconds=elapsed,
        sent=sent,
        buckets=buckets,
        e2e_ms=sorted(e2e),
        within_ms=settings.features.batch_within_ms,
        batches=batches,
        checkpoints=rounds["count"],
        checkpoint_s=rounds["sum"],
        gc_pauses=gc["count"],
        gc_s=gc["sum"],
    )


def freshness_records(n: int) -> list[dict[str, Any]]:
    """Realistic records to resend with a new event time (1,000 users, 200 merchants)."""
    from streamscore.generator import GeneratorConfig, generate

    start = datetime.now(tz=UTC) - timedelta(hours=1)
    out: list[dict[str, Any]] = []
    for chunk in generate(GeneratorConfig(events=n, seed=11, start=start, rate=10_000)):
        out.extend(chunk)
    return out


def traffic_summary(traffic: Traffic) -> str:
    span_h = (max(traffic.times_ms) - min(traffic.times_ms)) / 3.6e6
    size = sum(len(v) for v in traffic.values) / len(traffic)
    return f"{len(traffic):,} Avro transactions ({size:.0f} bytes each) over {span_h:.1f} h of event time"
