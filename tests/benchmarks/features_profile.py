"""Where the feature processor's time goes, without faust: the stage code on pre-consumed messages.

The messages are read from the transactions topic first (a plain confluent-kafka consumer, all partitions
from the start), then cut into faust-like batches (``batch_size`` events, partitions interleaved) and fed to
the processor's own ``FeatureProcessor.handle`` (ingest), then its forwards to ``handle`` again (rekey): the
real stages, ``OnlineWriter`` round trips to Redis and producer round trips to Kafka, minus faust.

Two passes on fresh state each: one with cheap exclusive timers around the processor's parts (no profiler
overhead: these are the per-event costs), one under pyinstrument (or cProfile when it is not installed) to
split the stage code itself into decode, dicts, dedup, gate, kernels and so on.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from streamscore.features.app import in_records
from streamscore.settings import Settings
from tests.benchmarks.features_common import say


@dataclass
class Raw:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None


def consume_all(settings: Settings, topic: str, n: int, timeout_s: float = 60.0) -> list[Raw]:
    """The first ``n`` messages of ``topic`` (all partitions from offset 0), as the consumer hands them out."""
    from confluent_kafka import Consumer, TopicPartition

    from streamscore.kafka import consumer_config

    consumer = Consumer(consumer_config(settings.kafka, f"bench-preconsume-{time.time_ns()}"))
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[Raw] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            for m in consumer.consume(10_000, 0.5):
                if m.error() is None:
                    out.append(Raw(topic, m.partition(), m.offset(), m.key(), m.value(), m.headers()))
        return out[:n]
    finally:
        consumer.close()


def faust_like_batches(messages: Sequence[Raw], batch_size: int) -> list[list[Any]]:
    """Batches as ``noack_take`` hands them out: up to ``batch_size`` events, partitions interleaved in
    arrival order per partition; each event has the ``.message`` faust gives (topic, partition, offset...)."""
    by_partition: dict[int, list[Raw]] = defaultdict(list)
    for m in messages:
        by_partition[m.partition].append(m)
    share = max(1, batch_size // max(1, len(by_partition)))
    cursors = dict.fromkeys(by_partition, 0)
    batches: list[list[Any]] = []
    while any(cursors[p] < len(by_partition[p]) for p in by_partition):
        batch = []
        for p, items in by_partition.items():
            chunk = items[cursors[p] : cursors[p] + share]
            cursors[p] += len(chunk)
            batch.extend(SimpleNamespace(message=m) for m in chunk)
        batches.append(batch)
    return batches


def _forward_events(
    forwards: Sequence[tuple[Any, ...]], partitions: int, batch_size: int, offsets: dict[int, int]
) -> list[list[Any]]:
    """The ingest stage's forwards as the rekey agent would receive them from Kafka (``offsets``: the next
    offset of each partition of the re-keyed topic, carried from call to call)."""
    raws = []
    for fw in forwards:
        topic, key, value, headers = fw[:4]
        partition = fw[4] if len(fw) > 4 and fw[4] is not None else zlib.crc32(key or b"") % partitions
        offset = offsets.get(partition, 0)
        raws.append(Raw(topic, partition, offset, key, value, list(headers or [])))
        offsets[partition] = offset + 1
    return faust_like_batches(raws, batch_size)


class _Timers:
    """Exclusive wall time per named part (a part's time excludes the timed parts it calls)."""

    def __init__(self) -> None:
        self.inclusive: dict[str, float] = defaultdict(float)
        self.exclusive: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[float]] = []

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        fn = getattr(obj, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([0.0])
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                children = self._stack.pop()[0]
                self.inclusive[name] += elapsed
                self.exclusive[name] += elapsed - children
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][0] += elapsed

        setattr(obj, attr, timed)


def _run(processor: Any, batches: list[list[Any]], partitions: int, batch_size: int) -> None:
    """Each ingest batch, then its forwards as the rekey agent would receive them."""
    offsets: dict[int, int] = {}
    for batch in batches:
        out = processor.handle(processor.ingest, in_records(batch))
        for forwarded in _forward_events(out.forwards, partitions, batch_size, offsets):
            processor.handle(processor.rekey, in_records(forwarded))


def _new_processor(settings: Settings) -> Any:
    from streamscore.features import load_plans, rules_for
    from streamscore.features.processor import FeatureProcessor

    plans = load_plans(settings)
    return FeatureProcessor(settings, plans, rules_for(settings, plans))


@dataclass
class ProfileResult:
    events: int
    parts_us: dict[str, float] = field(default_factory=dict)  # exclusive µs per transaction
    total_us: float = 0.0
    profiler: str = ""
    categories_us: dict[str, float] = field(default_factory=dict)
    top_functions: list[tuple[str, float]] = field(default_factory=list)
    snapshot_ms: float = 0.0
    snapshot_bytes: int = 0
    forward_messages: int = 0


# Pieces of the stage code, matched on pyinstrument frames (function name, file); first match wins and
# swallows everything below it. Unmatched time goes to the nearest enclosing "glue" frame.
_CATEGORIES: list[tuple[str, Callable[[str, str], bool]]] = [
    ("Avro decode (Serde.decode)", lambda fn, path: fn == "decode" and "/serde/" in path),
    ("validation (EventRules.invalid_reasons)", lambda fn, path: fn in ("invalid_reason", "invalid_reasons")),
    ("dedup (ViewState.dedup)", lambda fn, path: fn == "dedup" and "state.py" in path),
    ("lateness gate (ViewState.gate)", lambda fn, path: fn == "gate" and "state.py" in path),
    ("window kernels (ViewState.apply)", lambda fn, path: fn == "apply" and "state.py" in path),
    ("read changed entities (_online: unique + read)", lambda fn, path: fn == "_online"),
    ("entity/value id maps (entity_rows, value_ids)", lambda fn, path: fn in ("entity_rows", "value_ids")),
    ("numeric columns from dicts (_numeric)", lambda fn, path: fn == "_numeric"),
    ("event time to ms (_epoch_ms)", lambda fn, path: fn == "_epoch_ms"),
    ("forward: Arrow encode (encode_batch)", lambda fn, path: fn == "encode_batch"),
    ("forward: target partitions", lambda fn, path: fn == "target_partitions"),
    ("rekey: Arrow decode (decode_batch)", lambda fn, path: fn == "decode_batch"),
    ("online write (OnlineWriter.write: encode + Redis)", lambda fn, path: fn == "write" and "online.py" in path),
    ("dead letters (publish_raw)", lambda fn, path: fn == "publish_raw"),
    ("produce (Producer.send)", lambda fn, path: fn == "send" and "kafka/producer.py" in path),
    ("producer flush (wait for broker acks)", lambda fn, path: fn == "flush" and "kafka/producer.py" in path),
    ("Prometheus metrics", lambda fn, path: "prometheus_client" in path),
    (
        "state allocation (first batch of a partition, ring growth)",
        lambda fn, path: fn in ("new_state", "_grow", "_alloc") or (fn == "__init__" and "features/state.py" in path),
    ),
]
_GLUE = {
    "process": "stage glue (loops, dict lookups, lists, pyarrow arrays in process)",
    "handle": "handle glue (InRecord, grouping by partition, concatenation)",
}


def _categorise_pyinstrument(root: Any, events: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    cats: dict[str, float] = defaultdict(float)
    selfs: dict[str, float] = defaultdict(float)

    def walk(frame: Any, glue: str | None, parent: str = "?") -> None:
        fn, path = frame.function or "", frame.file_path or ""
        label = f"{fn} ({path.rsplit('/', 1)[-1]})" if path else fn
        if fn.startswith("["):  # pyinstrument's synthetic "[self]" frames: time in the parent itself
            label = parent
        for name, match in _CATEGORIES:
            if match(fn, path):
                cats[name] += frame.time
                return
        if fn in _GLUE and "services/streamscore/features" in path:
            glue = _GLUE[fn]
        children = list(frame.children)
        own = frame.time - sum(c.time for c in children)
        if glue is not None:
            cats[glue] += own
            selfs[label] += own
        for child in children:
            walk(child, glue, label)

    walk(root, None)
    per_event = {k: v / events * 1e6 for k, v in cats.items()}
    top = sorted(((k, v / events * 1e6) for k, v in selfs.items()), key=lambda kv: -kv[1])[:6]
    return per_event, top


def profile(settings: Settings, fresh: Callable[[str], Settings], n: int, profile_n: int) -> ProfileResult:
    """``fresh(name)`` gives settings of a new isolated run (topics, registry, Redis db) for each pass."""
    say(f"profile: reading {n:,} messages from {settings.topics.transactions}")
    messages = consume_all(settings, settings.topics.transactions, n)
    batch_size = settings.features.batch_size
    partitions = settings.topics.partitions
    batches = faust_like_batches(messages, batch_size)
    result = ProfileResult(events=len(messages))

    # Pass 1: timers only. The first batch is untimed: it allocates every partition's state and loads the
    # numba kernels (compiling them if their cache is stale), a start-up cost.
    warm, batches = batches[:1], batches[1:]
    timed_events = sum(len(b) for b in batches)
    s1 = fresh("profile-timed")
    proc = _new_processor(s1)
    _run(proc, warm, partitions, batch_size)
    timers = _Timers()
    timers.wrap(proc, "handle", "handle (glue: InRecord, grouping, concatenation, metrics)")
    timers.wrap(proc.ingest, "process", "ingest stage (decode, validate, dedup, gate, kernels, forwards)")
    timers.wrap(proc.rekey, "process", "rekey stage (forward decode, kernels)")
    timers.wrap(proc.writer, "write", "online write (OnlineWriter.write: encode + Redis)")
    timers.wrap(proc.dead_letters, "publish_raw", "dead letters (publish_raw)")
    timers.wrap(proc.producer, "send", "produce (forwards)")
    timers.wrap(proc.producer, "flush", "producer flush (wait for broker acks)")
    say(f"profile: pass 1 (timers) over {timed_events:,} events in {len(batches)} batches")
    started = time.perf_counter()
    _run(proc, batches, partitions, batch_size)
    total = time.perf_counter() - started
    result.events = timed_events
    result.total_us = total / timed_events * 1e6
    result.parts_us = {k: v / timed_events * 1e6 for k, v in timers.exclusive.items()}
    result.forward_messages = timers.calls.get("produce (forwards)", 0)
    from streamscore.features.processor import CHECKPOINT_BYTES

    written = sum(CHECKPOINT_BYTES.labels(stage)._value.get() for stage in ("features-ingest", "features-rekey"))
    started = time.perf_counter()
    proc.checkpoint()
    result.snapshot_ms = (time.perf_counter() - started) * 1000
    result.snapshot_bytes = int(
        sum(CHECKPOINT_BYTES.labels(stage)._value.get() for stage in ("features-ingest", "features-rekey")) - written
    )
    proc.writer.close()

    # Pass 2: a sampling profiler over the stage code.
    s2 = fresh("profile-sampled")
    proc = _new_processor(s2)
    subset = faust_like_batches(messages[:profile_n], batch_size)
    _run(proc, subset[:1], partitions, batch_size)
    subset = subset[1:]
    events = sum(len(b) for b in subset)
    try:
        from pyinstrument import Profiler
    except ImportError:
        Profiler = None
    if Profiler is not None:
        say(f"profile: pass 2 (pyinstrument) over {events:,} events")
        profiler = Profiler(interval=0.0002)
        profiler.start()
        _run(proc, subset, partitions, batch_size)
        profiler.stop()
        result.profiler = "pyinstrument (wall clock, 0.2 ms sampling)"
        result.categories_us, result.top_functions = _categorise_pyinstrument(
            profiler.last_session.root_frame(), events
        )
    else:
        import cProfile
        import pstats

        say(f"profile: pass 2 (cProfile, pyinstrument not installed) over {events:,} events")
        prof = cProfile.Profile()
        prof.enable()
        _run(proc, subset, partitions, batch_size)
        prof.disable()
        result.profiler = "cProfile (deterministic; inflates Python-heavy parts)"
        stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        for (path, _line, fn), (_cc, _nc, _tt, ct, _callers) in stats.items():
            for name, match in _CATEGORIES:
                if match(fn, path):
                    result.categories_us[name] = result.categories_us.get(name, 0.0) + ct / events * 1e6
                    break
    proc.writer.close()
    return result


def markdown(r: ProfileResult, processor_rate: float | None) -> str:
    lines = [
        f"### Where a processor event's time goes (in-process, no faust; {r.events:,} transactions after a "
        "warm-up batch)",
        "",
        "The processor's own `FeatureProcessor.handle` on pre-consumed messages (faust-like batches), ingest then",
        "rekey, with real Redis and Kafka round trips. Exclusive wall time per transaction (both stages):",
        "",
        "| part | µs / event | share |",
        "| --- | ---: | ---: |",
    ]
    for name, us in sorted(r.parts_us.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {us:.1f} | {us / r.total_us:.0%} |")
    lines.append(f"| **total in-process** | **{r.total_us:.1f}** | = {1e6 / r.total_us:,.0f} ev/s on one core |")
    if processor_rate:
        faust_us = 1e6 / processor_rate - r.total_us
        lines.append(
            f"| faust, event loop, consumer (by difference with the 1-process run, {processor_rate:,.0f} ev/s) "
            f"| {faust_us:.1f} | {faust_us / (1e6 / processor_rate):.0%} of the processor's |"
        )
    lines += [
        "",
        f"Forward messages produced: {r.forward_messages:,}. One checkpoint round of every partition after the run: "
        f"{r.snapshot_ms:,.0f} ms, {r.snapshot_bytes / 1e6:.1f} MB of changed state written to Kafka (taken under "
        "the processing lock every `checkpoint_interval_s`).",
        "",
    ]
    if r.categories_us:
        total = sum(r.categories_us.values())
        lines += [
            f"Inside the stages, by {r.profiler}:",
            "",
            "| piece | µs / event | share |",
            "| --- | ---: | ---: |",
        ]
        for name, us in sorted(r.categories_us.items(), key=lambda kv: -kv[1]):
            if us >= 0.05:
                lines.append(f"| {name} | {us:.1f} | {us / total:.0%} |")
        if r.top_functions:
            tops = ", ".join(f"`{name}` {us:.1f} µs" for name, us in r.top_functions)
            lines += ["", f"Largest self times inside the glue: {tops}."]
        lines.append("")
    return "\n".join(lines)
