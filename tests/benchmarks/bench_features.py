"""The feature stage: processor throughput against the naive faust design and the Kafka/faust ceilings,
freshness at a steady rate, a profile of the processor's stage code, the backfill against pandas and the
online writer against Feast.

Everything runs against a Kafka + Redis of its own (free loopback ports, a throwaway directory, stopped at
the end); every number is reported next to a baseline measured in the same run. ``PARTS`` can be narrowed
from the command line: ``python -m tests.benchmarks features:profile,backfill``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from streamscore.settings import Settings
from tests.benchmarks import features_batch, features_profile, features_stream
from tests.benchmarks.features_common import (
    bench_stack,
    fmt_rate,
    free_port,
    isolated,
    make_traffic,
    prepare,
    produce,
    say,
    stack_pids,
)

T = TypeVar("T")

PARTS = ("ceiling", "naive", "processor", "freshness", "profile", "online", "backfill")

N_EVENTS = 300_000  # pre-produced transactions (4 partitions)
KAFKA_EVENTS = 1_500_000  # the same for the kafka engine's runs
NAIVE_TARGET = 3_000  # events the naive worker may take; it is cut at NAIVE_MAX_S of steady running
NAIVE_MAX_S = 30.0
BARE_MAX_S = 12.0
FRESH_SECONDS = 20.0
# (events/s, batch_within_ms, engine): the target rate on each engine, then a rate one faust process sustains.
FRESH_RUNS = ((10_000.0, 100, "faust"), (10_000.0, 20, "kafka"), (2_000.0, 20, "faust"), (2_000.0, 20, "kafka"))
PROFILE_SAMPLED = 100_000
BACKFILL_EVENTS = 1_500_000
BACKFILL_USERS = 10_000


def _with(settings: Settings, *, group: str | None = None, redis_db: int | None = None, **top: Any) -> Settings:
    update: dict[str, Any] = dict(top)
    if group is not None:
        update["features"] = settings.features.model_copy(update={"group_id": group})
    if redis_db is not None:
        url = settings.redis.url.rsplit("/", 1)[0] + f"/{redis_db}"
        update["redis"] = settings.redis.model_copy(update={"url": url})
    return settings.model_copy(update=update)


def run(parts: Iterable[str] | None = None) -> str:
    selected = set(parts or PARTS)
    unknown = selected - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown feature benchmark part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    started = time.monotonic()
    sections: list[str] = []
    results: dict[str, Any] = {}
    failures: list[str] = []

    def attempt(what: str, fn: Callable[[], T]) -> T | None:
        """One measurement; a failure is reported in the Markdown and the others still run."""
        try:
            return fn()
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            say(f"{what}: FAILED: {type(exc).__name__}: {first}")
            failures.append(f"- {what}: not measured ({type(exc).__name__}: {first})")
            return None

    with bench_stack() as (base, tmp):
        pids = stack_pids(base)
        redis_dbs = iter(range(1, 16))
        a = isolated(base, tmp, "a", redis_db=next(redis_dbs), metrics=True)
        prepare(a)
        traffic = None
        if selected & {"ceiling", "naive", "processor", "profile"}:
            say(f"generating and encoding {N_EVENTS:,} transactions")
            traffic = make_traffic(N_EVENTS)
            say(f"producing them to {a.topics.transactions}")
            produce(a, a.topics.transactions, traffic)

        if "ceiling" in selected:
            say("ceiling: confluent-kafka consume")
            topic = a.topics.transactions
            results["raw"] = attempt(
                "raw consume", lambda: features_stream.consume_rate(a, topic, N_EVENTS, decode=False)
            )
            results["decode"] = attempt(
                "consume + decode", lambda: features_stream.consume_rate(a, topic, N_EVENTS, decode=True)
            )
            say("ceiling: bare faust worker")
            results["bare"] = attempt(
                "bare faust",
                lambda: features_stream.faust_child(
                    "bare", _with(a, group="bench-bare"), tmp / "bare", target=N_EVENTS, max_steady_s=BARE_MAX_S
                ),
            )
        if "processor" in selected:
            say("processor: 1 process")
            results["p1"] = attempt(
                "processor, 1 process", lambda: features_stream.run_processors([a], tmp / "p1", N_EVENTS, pids)
            )
            b = isolated(base, tmp, "b", redis_db=next(redis_dbs), metrics=True)
            prepare(b)
            assert traffic is not None
            produce(b, b.topics.transactions, traffic)
            say("processor: 2 processes")
            b2 = _with(b, metrics_port=free_port())
            results["p2"] = attempt(
                "processor, 2 processes", lambda: features_stream.run_processors([b, b2], tmp / "p2", N_EVENTS, pids)
            )
            # The kafka engine drains 300k in a few seconds, less than a second process takes to start and
            # join: its runs get more events, so the steady part (both processes applying) lasts.
            say(f"generating and encoding {KAFKA_EVENTS:,} transactions for the kafka engine")
            more = make_traffic(KAFKA_EVENTS)
            for key, processes in (("k1", 1), ("k2", 2)):
                say(f"processor, kafka engine: {processes} process{'es' if processes > 1 else ''}")
                k = isolated(base, tmp, key, redis_db=next(redis_dbs), metrics=True, engine="kafka")
                prepare(k)
                produce(k, k.topics.transactions, more)
                ks = [k] + [_with(k, metrics_port=free_port()) for _ in range(processes - 1)]
                results[key] = attempt(
                    f"processor, kafka engine, {processes} process(es)",
                    lambda ks=ks, key=key: features_stream.run_processors(ks, tmp / key, KAFKA_EVENTS, pids),
                )
        if "naive" in selected:
            say("naive: faust per-event agent with hopping tables and a Feast write per event")
            naive_settings = _with(a, group="bench-naive", redis_db=next(redis_dbs))
            results["naive"] = attempt(
                "naive baseline",
                lambda: features_stream.faust_child(
                    "naive",
                    naive_settings,
                    tmp / "naive",
                    target=NAIVE_TARGET,
                    max_steady_s=NAIVE_MAX_S,
                    timeout_s=NAIVE_MAX_S + 60,
                ),
            )
        if selected & {"ceiling", "naive", "processor"}:
            sections.append(_throughput_markdown({k: v for k, v in results.items() if v is not None}, traffic))

        if "freshness" in selected:
            records = features_stream.freshness_records(60_000)
            fresh = []
            for rate, within, engine in FRESH_RUNS:
                name = f"fresh-{rate:.0f}-{within}-{engine}"
                f = isolated(base, tmp, name, redis_db=next(redis_dbs), metrics=True, engine=engine)
                f = f.model_copy(update={"features": f.features.model_copy(update={"batch_within_ms": within})})
                prepare(f)
                say(f"freshness: {rate:,.0f} events/s, batch_within_ms={within}, {engine} engine")
                one = attempt(
                    f"freshness ({rate:,.0f}/s, batch_within_ms={within}, {engine} engine)",
                    lambda f=f, name=name, rate=rate: features_stream.freshness(
                        f, tmp / name, records, rate=rate, seconds=FRESH_SECONDS
                    ),
                )
                if one is not None:
                    fresh.append((engine, one))
            if fresh:
                capacity = {e: results[k].rate_full for e, k in (("faust", "p1"), ("kafka", "k1")) if results.get(k)}
                sections.append(_freshness_markdown(fresh, capacity))

        if "profile" in selected:

            def new_run(name: str) -> Settings:
                s = isolated(base, tmp, name, redis_db=next(redis_dbs))
                prepare(s)
                return s

            prof = attempt("profile", lambda: features_profile.profile(a, new_run, N_EVENTS, PROFILE_SAMPLED))
            if prof is not None:
                p1 = results.get("p1")
                sections.append(features_profile.markdown(prof, p1.rate_full if p1 else None))

        if "online" in selected:
            say("online: OnlineWriter vs Feast write_to_online_store")
            o = isolated(base, tmp, "online", redis_db=next(redis_dbs))
            prepare(o)
            online = attempt("online writes", lambda: features_batch.online_bench(o))
            if online is not None:
                sections.append(features_batch.online_markdown(online))

        if "backfill" in selected:
            bf = attempt(
                "backfill",
                lambda: features_batch.backfill_bench(a, tmp / "backfill", BACKFILL_EVENTS, BACKFILL_USERS),
            )
            if bf is not None:
                sections.append(features_batch.backfill_markdown(bf))

    if failures:
        sections.append("\n".join(["### Not measured in this run", "", *failures, ""]))
    say(f"features: done in {time.monotonic() - started:.0f} s")
    return "\n".join(sections)


def _throughput_markdown(r: dict[str, Any], traffic: Any) -> str:
    naive, bare, decode = r.get("naive"), r.get("bare"), r.get("decode")
    base = naive.rate if naive else None

    def row(what: str, rate: float, note: str = "") -> str:
        vs_naive = f"{rate / base:,.0f}x" if base else "-"
        vs_bare = _ratio(rate / bare.rate) if bare else "-"
        vs_decode = _ratio(rate / decode) if decode else "-"
        return f"| {what} | {fmt_rate(rate)} | {vs_naive} | {vs_bare} | {vs_decode} | {note} |"

    lines = [
        f"### Feature processor throughput (events/s, {features_stream.traffic_summary(traffic)}, 4 partitions)"
        if traffic
        else "### Feature processor throughput",
        "",
        "Every rate is timed over the steady part: from the end of the first batch (or, for the processor, the",
        "moment every process has applied one) to the last event, so start-up is excluded.",
        "",
        "| what | events/s | vs naive | vs bare faust | vs consume + decode | |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    if "raw" in r:
        lines.append(row("ceiling: confluent-kafka `consume(10000)`, no decoding, one process", r["raw"]))
    if decode:
        lines.append(row('ceiling: the same + `Serde("transaction").decode` per message', decode))
    if bare:
        lines.append(
            row(
                "ceiling: bare faust agent, `noack_take(5000, within=0.1)` + ack, child process",
                bare.rate,
                f"{bare.events:,} events in {bare.seconds:.1f} s",
            )
        )
    if naive:
        split = (
            ", ".join(f"{k} {v / naive.events * 1000:.1f} ms" for k, v in naive.split.items()) if naive.events else ""
        )
        lines.append(
            row(
                "**baseline** naive: faust agent per event, hopping tables 5m/1h/24h, Feast write per event",
                naive.rate,
                f"{naive.events:,} events in {naive.seconds:.1f} s; per event: {split}",
            )
        )
    for key, engine in (("p1", "faust"), ("p2", "faust"), ("k1", "kafka"), ("k2", "kafka")):
        p = r.get(key)
        if p is None:
            continue
        procs = f"{engine} engine, {p.processes} process{'es' if p.processes > 1 else ''}"
        lines.append(row(f"streamscore processor, {procs}: ingest stage (user views)", p.rate_ingest))
        lines.append(
            row(
                f"**streamscore processor, {procs}: both stages** (user + merchant views written)",
                p.rate_full,
                f"{p.seconds:.1f} s; per process {fmt_rate(p.rate_full / p.processes)}",
            )
        )
    lines.append("")
    for one, two, engine in (("p1", "p2", "faust"), ("k1", "k2", "kafka")):
        p1, p2 = r.get(one), r.get(two)
        if p1:
            cpu = ", ".join(f"{k} {v / p1.seconds:.0%}" for k, v in p1.cpu.items())
            lines.append(
                f"{engine} engine, 1 process, {p1.events:,} events: start-up {p1.startup_s:.1f} s before the first "
                "batch; CPU over the "
                f"steady part (share of one core): {cpu}. All offsets committed {_fmt_s(p1.caught_up_s)} after the "
                f"steady part began (commits follow checkpoints). SIGTERM: {_stop_text(p1)}."
            )
        if p2:
            cpu = ", ".join(f"{k} {v / p2.seconds:.0%}" for k, v in p2.cpu.items())
            scale = f"{p2.rate_full / p1.rate_full:.2f}x the 1-process rate" if p1 else ""
            lines.append(
                f"{engine} engine, 2 processes sharing the 4 partitions: {scale} on {os.cpu_count()} cores that also "
                f"run the broker and Redis; CPU: {cpu}. SIGTERM: {_stop_text(p2)}."
            )
    targets = []
    if r.get("p1") and naive:
        targets.append(f"faust engine >= 10x the naive baseline: {r['p1'].rate_full / naive.rate:,.0f}x")
    if r.get("p1") and bare:
        share = r["p1"].rate_full / bare.rate
        targets.append(f"faust engine >= 80% of the bare faust agent: {share:.0%} ({_met(share >= 0.8)})")
    if r.get("k1") and decode:
        share = r["k1"].rate_full / decode
        targets.append(f"kafka engine >= 50% of consume + decode per process: {share:.0%} ({_met(share >= 0.5)})")
    if r.get("k1") and r.get("k2"):
        growth = r["k2"].rate_full / r["k1"].rate_full
        targets.append(f"kafka engine growing with processes: 2 processes {growth:.2f}x one")
    if targets:
        lines.append("Targets: " + "; ".join(targets) + ".")
    if naive:
        lines.append(
            "The naive baseline: `feature_repo` defines no PushSource, so its per-event write is "
            "`FeatureStore.write_to_online_store` of a one-row DataFrame (what `push` calls after resolving a "
            "push source). It computes 12 of the 14 user features (count/sum/mean/max per window; "
            "count_distinct and seconds-since-previous are written as nulls) and no merchant view, and a hopping "
            "table with a 60 s step updates size/60 windows per event (5 + 60 + 1,440), each a changelog message."
        )
    lines.append("")
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def _ratio(x: float) -> str:
    return f"{x:.2f}" if x >= 0.01 else f"{x:.1g}"


def _fmt_s(x: float | None) -> str:
    return "not within 60 s" if x is None else f"{x:.1f} s"


def _stop_text(p: Any) -> str:
    if p.stopped_cleanly:
        return f"exited cleanly in {p.stop_s:.1f} s"
    return f"not exited after 10 s, killed ({p.stop_s:.1f} s)"


def _freshness_markdown(results: list[tuple[str, Any]], capacity: dict[str, float]) -> str:
    lines = [
        f"### Freshness at a steady rate (one processor, {FRESH_SECONDS:.0f} s per row, event_time = send time)",
        "",
        "From the processor's `streamscore_features_freshness_seconds` histogram (event time to the online write",
        "acknowledged; deltas over the paced window, bucket resolution: the bucket holding the quantile and a",
        "linear interpolation inside it), and end to end measured outside: a sentinel event for a new user every",
        "250 ms, timed from `produce()` until its Redis hash exists (1 ms polling).",
        "",
        "| engine | events/s sent | batch_within_ms | stage | p50 | p99 | e2e sentinel p50 / p99 / max (n) "
        "| checkpoint rounds, mean | full GCs, mean |",
        "| --- | ---: | ---: | --- | --- | --- | --- | --- | --- |",
    ]
    for engine, f in results:
        e2e = f.e2e_ms
        if e2e:
            e2e_text = f"{_rank(e2e, 0.5):.0f} / {_rank(e2e, 0.99):.0f} / {e2e[-1]:.0f} ms ({len(e2e)})"
        else:
            e2e_text = "none seen"
        rounds = f"{f.checkpoints:.0f}, {1000 * f.checkpoint_s / f.checkpoints:.0f} ms" if f.checkpoints else "none"
        pauses = f"{f.gc_pauses:.0f}, {1000 * f.gc_s / f.gc_pauses:.0f} ms" if f.gc_pauses else "none"
        for stage, buckets in f.buckets.items():
            q50, q99 = features_stream.quantile(buckets, 0.5), features_stream.quantile(buckets, 0.99)
            first = stage == features_stream.INGEST
            lines.append(
                f"| {engine} | {fmt_rate(f.rate)} | {f.within_ms} | {stage} | {_bucket(q50)} | {_bucket(q99)} | "
                f"{e2e_text if first else ''} | {rounds if first else ''} | {pauses if first else ''} |"
            )
    lines += [
        "",
        "Target: p99 <= 100 ms at 10,000 events/s with the kafka engine (user features: the ingest stage). The "
        "merchant views (rekey stage) go through a second Kafka hop.",
    ]
    for engine, rate in capacity.items():
        lines.append(
            f"One {engine}-engine process sustained {fmt_rate(rate)} events/s in the throughput run above: a steady "
            "rate above that is a growing backlog, and freshness is then the backlog's age, not the pipeline's "
            "latency."
        )
    lines.append("")
    return "\n".join(lines)


def _rank(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _bucket(q: tuple[float, float, float]) -> str:
    lo, hi, est = q
    if math.isnan(est):
        return "-"
    return f"{est * 1000:.0f} ms ({lo * 1000:g}-{hi * 1000:g})"
