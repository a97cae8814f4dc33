"""The online reader: one inference batch's features through ``OnlineReader.read`` against Feast's
``get_online_features`` on the same keys, with two floors that fetch the same cells and decode nothing: a
redis-py ``pipeline(transaction=False)`` of the ``HMGET``s, and the same ``HMGET``s packed beforehand and sent
in one write on a redis-py connection (the reader's own transport, without its key building and decoding).

Runs against a Kafka + Redis of its own (free loopback ports, a throwaway directory, stopped at the end). 10k
users and 1k merchants are written with ``OnlineWriter``; each batch is 100 score requests (100 distinct users,
merchants drawn at random), the shape inference workers read. The readers take turns in rounds of
``ROUND`` batches on the same keys, so drift in the machine's load falls on all of them alike, while the garbage
one reader leaves (Feast's, mostly) is collected within its own round. ``python -m tests.benchmarks reader``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from streamscore.settings import Settings
from tests.benchmarks.features_common import bench_stack, isolated, say

PARTS = ("read",)

USERS = 10_000
MERCHANTS = 1_000
BATCH = 100
BATCHES = 1_000  # timed batches per reader
ROUND = 100  # batches a reader runs before the next one takes its turn
WARMUP = 50
SERVICE = "fraud_model_v1"


@dataclass
class ReadResult:
    features: int
    hmgets: float  # mean HMGETs per batch (distinct users + distinct merchants)
    samples: dict[str, np.ndarray]  # reader -> seconds per batch


def write_entities(settings: Settings, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    from streamscore.store import OnlineWriter

    users = [f"user-{i}" for i in range(USERS)]
    merchants = [f"merchant-{i}" for i in range(MERCHANTS)]
    now_ms = int(time.time() * 1000)
    with OnlineWriter(settings) as writer:
        for view, ids in (("user_transactions", users), ("merchant_transactions", merchants)):
            n = len(ids)
            features = {
                name: rng.integers(0, 500, n) if "count" in name else rng.gamma(2.0, 40.0, n)
                for name in writer.views[view]
            }
            for chunk in range(0, n, 2_000):
                part = slice(chunk, chunk + 2_000)
                writer.write(
                    view,
                    ids[part],
                    {k: v[part] for k, v in features.items()},
                    now_ms - rng.integers(0, 3_600_000, len(ids[part])),
                )
    return users, merchants


def read_bench(settings: Settings) -> ReadResult:
    from streamscore.store import feature_store, quiet_feast
    from streamscore.store.layout import redis_keys
    from streamscore.store.reader import OnlineReader

    rng = np.random.default_rng(11)
    say(f"reader: writing {USERS:,} users and {MERCHANTS:,} merchants")
    users, merchants = write_entities(settings, rng)
    store = feature_store(settings)
    reader = OnlineReader(settings, SERVICE, store)
    with quiet_feast():
        service = store.get_feature_service(SERVICE)

    batches = [
        {
            "user_id": [users[i] for i in rng.choice(USERS, BATCH, replace=False)],
            "merchant_id": [merchants[i] for i in rng.integers(0, MERCHANTS, BATCH)],
        }
        for _ in range(WARMUP + BATCHES)
    ]

    # The floors: the same HMGETs (keys built beforehand, replies left undecoded) on the same connection pool.
    plan = reader._views  # the reader's own fields, so the floors ask Redis for exactly the same cells
    raw_client = redis.Redis(connection_pool=reader.redis.connection_pool)
    raw_commands = [
        [
            (key, view.fields)
            for view in plan
            for key in redis_keys(view.join_key, list(dict.fromkeys(batch[view.request_key])), reader.project).tolist()
        ]
        for batch in batches
    ]
    packer = redis.Connection()  # never connected: only its (hiredis) packing is used
    packed = [
        [b"".join(packer.pack_command("HMGET", key, *fields)) for key, fields in commands] for commands in raw_commands
    ]

    def feast(i: int) -> Any:
        with quiet_feast():
            rows = batches[i]
            return store.get_online_features(features=service, entity_rows=rows).to_dict()

    def ours(i: int) -> Any:
        return reader.read(batches[i])

    def pipeline(i: int) -> Any:
        with raw_client.pipeline(transaction=False) as pipe:
            for key, fields in raw_commands[i]:
                pipe.execute_command("HMGET", key, *fields)
            return pipe.execute()

    def transport(i: int) -> Any:
        return reader._round_trip(packed[i])

    # Same answers before timing anything: every feature of one batch, None <-> NaN.
    got, expected = ours(0), feast(0)
    for j, name in enumerate(got.names):
        theirs = np.array([np.nan if v is None else v for v in expected[name]], dtype=np.float64)
        if not np.array_equal(got.values[:, j], theirs, equal_nan=True):
            raise AssertionError(f"OnlineReader and Feast disagree on {name}")

    if transport(0) != pipeline(0):
        raise AssertionError("the packed HMGETs and redis-py's pipeline got different replies")
    readers: dict[str, Callable[[int], Any]] = {
        "feast": feast, "ours": ours, "pipeline": pipeline, "transport": transport
    }  # fmt: skip
    samples: dict[str, list[float]] = {name: [] for name in readers}
    say(f"reader: {BATCHES:,} batches of {BATCH} requests through each reader, in rounds of {ROUND}")
    for fn in readers.values():
        for i in range(WARMUP):
            fn(i)
    for first in range(WARMUP, WARMUP + BATCHES, ROUND):
        for name, fn in readers.items():
            gc.collect()
            for i in range(first, min(first + ROUND, WARMUP + BATCHES)):
                started = time.perf_counter()
                fn(i)
                samples[name].append(time.perf_counter() - started)
    hmgets = float(np.mean([len(c) for c in raw_commands[WARMUP:]]))
    reader.close()
    return ReadResult(len(reader.names), hmgets, {k: np.array(v) for k, v in samples.items()})


def read_markdown(r: ReadResult) -> str:
    def ms(name: str, q: float) -> float:
        return float(np.quantile(r.samples[name], q)) * 1000

    feast50, feast99 = ms("feast", 0.5), ms("feast", 0.99)
    over_floor = ms("ours", 0.5) / ms("transport", 0.5)
    pipeline_extra = ms("pipeline", 0.5) - ms("transport", 0.5)
    rows = [
        ("Feast `get_online_features(features=service)` (baseline)", "feast"),
        ("`OnlineReader.read`", "ours"),
        ("redis-py `pipeline(transaction=False)` of the `HMGET`s, undecoded", "pipeline"),
        ("the same `HMGET`s packed beforehand, one write, undecoded (floor)", "transport"),
    ]
    lines = [
        f"| {label} | {ms(key, 0.5):.3f} | {ms(key, 0.99):.3f} | {feast50 / ms(key, 0.5):.1f}x | "
        f"{feast99 / ms(key, 0.99):.1f}x |"
        for label, key in rows
    ]
    return "\n".join(
        [
            f"### Online store reads (ms per batch of {BATCH} score requests, {r.features} features of `{SERVICE}`, "
            f"{BATCHES:,} batches each)",
            "",
            "| reader | p50 ms | p99 ms | p50 vs Feast | p99 vs Feast |",
            "| --- | ---: | ---: | ---: | ---: |",
            *lines,
            "",
            f"{USERS:,} users and {MERCHANTS:,} merchants written with `OnlineWriter`; each batch asks for 100 "
            f"distinct users and 100 random merchants ({r.hmgets:.0f} `HMGET`s on average, one pipelined round trip "
            f"for every reader). The readers take turns in rounds of {ROUND} batches on the same keys and the same "
            f"Redis, after {WARMUP} warm-up batches each. `OnlineReader.read` returns a float64 matrix, the missing "
            f"mask and event times; it costs {over_floor:.2f}x the floor at p50 (deduplication, key "
            "building, packing and numpy decoding on top of the round trip). redis-py's own pipeline spends "
            f"{pipeline_extra:.2f} ms more than the floor packing each argument and "
            "parsing each reply in Python, which is why the reader packs its `HMGET`s itself. Feast returns Python "
            "lists (`to_dict`) built from one protobuf per entity key and per value.",
            "",
        ]
    )


def run(parts: Iterable[str] | None = None) -> str:
    selected = set(parts or PARTS)
    unknown = selected - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown reader benchmark part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    from streamscore.store import apply_definitions

    with bench_stack() as (base, tmp):
        settings = isolated(base, tmp, "reader", redis_db=1)
        apply_definitions(settings)
        return read_markdown(read_bench(settings))


if __name__ == "__main__":
    print(run())
