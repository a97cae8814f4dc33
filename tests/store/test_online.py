"""OnlineWriter against the session's real Redis, read back and compared with Feast's own code paths."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
from feast import FeatureStore
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.types import Int64
from prometheus_client import REGISTRY

from streamscore.settings import RedisSettings, Settings
from streamscore.store import OnlineWriter, apply_definitions, feature_store, quiet_feast, repo_config
from tests.conftest import free_port
from tests.store.helpers import CountingConnection

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Stream feature views are experimental:RuntimeWarning"),
]

T0 = 1_700_000_000_123  # epoch ms, with a millisecond part so Timestamp.nanos is exercised
JOIN_KEYS = {"user_transactions": "user_id", "merchant_transactions": "merchant_id"}


@pytest.fixture(scope="module")
def store(settings: Settings) -> FeatureStore:
    apply_definitions(settings)
    return feature_store(settings)


@pytest.fixture(scope="module")
def writer(settings: Settings, store: FeatureStore) -> Iterator[OnlineWriter]:
    with OnlineWriter(settings, store) as w:
        yield w


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(settings.redis.url) as c:
        yield c


Schema = dict[str, dict[str, str]]  # view -> feature -> "int" | "float"


@pytest.fixture(scope="module")
def schema(store: FeatureStore) -> Schema:
    """The features of each view, from the registered feature service (what serving reads): no names here."""
    with quiet_feast():
        service = store.get_feature_service("fraud_model_v1")
    return {
        p.name: {f.name: "int" if f.dtype == Int64 else "float" for f in p.features}
        for p in service.feature_view_projections
    }


def _ints(schema: Schema, view: str) -> list[str]:
    return sorted(name for name, kind in schema[view].items() if kind == "int")


def _floats(schema: Schema, view: str) -> list[str]:
    return sorted(name for name, kind in schema[view].items() if kind == "float")


def _features(schema: Schema, view: str, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: rng.integers(0, 1000, n) if kind == "int" else rng.normal(100.0, 50.0, n)
        for name, kind in schema[view].items()
    }


def _read(store: FeatureStore, users: list[str], merchants: list[str]) -> dict[str, list[Any]]:
    # full_feature_names: "<view>__<feature>", so the checks hold even if two views share a feature name.
    with quiet_feast():
        service = store.get_feature_service("fraud_model_v1")
        rows = [{"user_id": u, "merchant_id": m} for u, m in zip(users, merchants, strict=True)]
        result: dict[str, list[Any]] = store.get_online_features(
            features=service, entity_rows=rows, full_feature_names=True
        ).to_dict()
    return result


def _key(view: str, entity: str) -> bytes:
    entity_key = EntityKey(join_keys=[JOIN_KEYS[view]], entity_values=[Value(string_val=entity)])
    return _redis_key("streamscore", entity_key, entity_key_serialization_version=3)


def _snapshot(client: redis.Redis, keys: list[bytes]) -> list[tuple[dict[bytes, bytes], int]]:
    return [(client.hgetall(k), client.ttl(k)) for k in keys]


def test_views_are_the_definitions(writer: OnlineWriter, schema: Schema) -> None:
    assert writer.views == {view: sorted(features) for view, features in sorted(schema.items())}
    for view in ("user_transactions", "merchant_transactions"):  # both kinds are exercised below
        assert _ints(schema, view), view
        assert _floats(schema, view), view


def test_feast_reads_every_value_written(
    writer: OnlineWriter, store: FeatureStore, schema: Schema, unique: str
) -> None:
    users, merchants = [f"u-{unique}-{i}" for i in range(3)], [f"m-{unique}-{i}" for i in range(3)]
    user_features = _features(schema, "user_transactions", 3, seed=1)
    a_float, an_int = _floats(schema, "user_transactions")[0], _ints(schema, "user_transactions")[0]
    user_features[a_float][1] = np.nan  # no value
    user_features[an_int] = np.array([4.0, np.nan, 6.0])  # NaN in an Int64 column: also no value
    merchant_features = _features(schema, "merchant_transactions", 3, seed=2)
    assert writer.write("user_transactions", users, user_features, np.full(3, T0)) == 3
    # datetime64 timestamps are accepted too
    ts = np.array([T0, T0 + 1, T0 + 2]).astype("datetime64[ms]")
    assert writer.write("merchant_transactions", merchants, merchant_features, ts) == 3

    got = _read(store, [*users, f"u-{unique}-absent"], [*merchants, f"m-{unique}-absent"])
    for view, features in (("user_transactions", user_features), ("merchant_transactions", merchant_features)):
        assert {f"{view}__{name}" for name in features} <= got.keys()
        for name, values in features.items():
            column = got[f"{view}__{name}"]
            expected = [None if np.isnan(v) else v for v in values.astype(np.float64)]
            assert column == [*expected, None], name
            kind = int if schema[view][name] == "int" else float
            assert all(type(v) is kind for v in column if v is not None), name
    assert got[f"user_transactions__{a_float}"][1] is None
    assert got[f"user_transactions__{an_int}"] == [4, None, 6, None]


def test_replay_leaves_redis_byte_identical(
    writer: OnlineWriter, client: redis.Redis, schema: Schema, unique: str
) -> None:
    users = [f"replay-{unique}-{i}" for i in range(50)]
    features = _features(schema, "user_transactions", 50, seed=3)
    features[_floats(schema, "user_transactions")[-1]][::7] = np.nan
    writer.write("user_transactions", users, features, T0 + np.arange(50))
    keys = [_key("user_transactions", u) for u in users]
    first = _snapshot(client, keys)
    assert all(len(fields) == len(features) + 1 for fields, _ in first)  # the features and _ts
    writer.write("user_transactions", users, features, T0 + np.arange(50))
    assert _snapshot(client, keys) == first


def test_a_correction_with_the_same_timestamp_lands(
    writer: OnlineWriter, store: FeatureStore, client: redis.Redis, schema: Schema, unique: str
) -> None:
    """Feast's own write path drops a row whose timestamp is not newer than the stored one; ours replaces it."""
    merchant = f"fix-{unique}"
    first = _features(schema, "merchant_transactions", 1, seed=13)
    an_int, a_float = _ints(schema, "merchant_transactions")[0], _floats(schema, "merchant_transactions")[0]
    corrected = {**first, an_int: first[an_int] + 1, a_float: first[a_float] + 0.5}
    writer.write("merchant_transactions", [merchant], first, np.array([T0]))
    before = client.hgetall(_key("merchant_transactions", merchant))

    frame = pd.DataFrame({"merchant_id": [merchant], "event_timestamp": pd.to_datetime([T0], unit="ms", utc=True)})
    with quiet_feast():
        store.write_to_online_store("merchant_transactions", frame.assign(**{k: v for k, v in corrected.items()}))
    assert client.hgetall(_key("merchant_transactions", merchant)) == before  # Feast dropped the correction

    writer.write("merchant_transactions", [merchant], corrected, np.array([T0]))
    got = _read(store, ["nobody"], [merchant])
    assert got[f"merchant_transactions__{an_int}"] == [int(corrected[an_int][0])]
    assert got[f"merchant_transactions__{a_float}"] == [float(corrected[a_float][0])]


def test_same_bytes_as_feasts_write_path(
    writer: OnlineWriter, store: FeatureStore, client: redis.Redis, schema: Schema, unique: str
) -> None:
    ours, theirs = f"ours-{unique}", f"feast-{unique}"
    features = _features(schema, "user_transactions", 1, seed=4)
    floats, ints = _floats(schema, "user_transactions"), _ints(schema, "user_transactions")
    features[floats[0]] = np.array([np.nan])  # null
    features[floats[1]] = np.array([-0.0])
    features[ints[0]] = np.array([0])  # oneof: written although 0
    features[ints[-1]] = np.array([-5])  # a 10-byte varint
    frame = pd.DataFrame(
        {"user_id": [theirs], "event_timestamp": pd.to_datetime([T0], unit="ms", utc=True), **features}
    )
    with quiet_feast():
        store.write_to_online_store("user_transactions", frame)
    writer.write("user_transactions", [ours], features, np.array([T0]))

    feast_hash = client.hgetall(_key("user_transactions", theirs))
    our_hash = client.hgetall(_key("user_transactions", ours))
    # Feast also writes the join key as if it were a feature: a registered StreamFeatureView lists its entity
    # column among its features. Nothing reads it (the feature service does not name it), so we leave it out.
    join_key_field = _mmh3("user_transactions:user_id")
    assert feast_hash.pop(join_key_field) == Value(string_val=theirs).SerializeToString()
    assert our_hash == feast_hash
    assert len(our_hash) == len(features) + 1


def test_one_round_trip_and_no_reads_per_write(
    settings: Settings, store: FeatureStore, client: redis.Redis, schema: Schema, unique: str
) -> None:
    with OnlineWriter(settings, store) as writer:
        pool = writer.redis.connection_pool
        writer.redis.connection_pool = redis.ConnectionPool(
            connection_class=CountingConnection, **pool.connection_kwargs
        )
        n = 200
        users = [f"trip-{unique}-{i}" for i in range(n)]
        features = _features(schema, "user_transactions", n, seed=5)
        writer.write("user_transactions", users, features, np.full(n, T0))  # connects (handshake commands)
        CountingConnection.events.clear()
        stats_before = client.info("commandstats")
        writer.write("user_transactions", users, features, np.full(n, T0 + 1))
        stats_after = client.info("commandstats")

    assert CountingConnection.events == ["send"] + ["read"] * n  # everything sent, then every reply read

    def calls(stats: dict[str, Any], command: str) -> int:
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    assert calls(stats_after, "hset") - calls(stats_before, "hset") == n
    for read in ("hget", "hmget", "hgetall", "get", "mget", "exists"):
        assert calls(stats_after, read) == calls(stats_before, read), read
    # 'info' itself is the only other command the server saw between the two snapshots
    others = {
        k for k in stats_after if k not in ("cmdstat_hset", "cmdstat_info") and stats_after[k] != stats_before.get(k)
    }
    assert others == set()


def test_key_ttl_of_the_store_is_applied(settings: Settings, client: redis.Redis, schema: Schema, unique: str) -> None:
    config = repo_config(settings)
    config.online_store.key_ttl_seconds = 3600
    with OnlineWriter(settings, FeatureStore(config=config)) as writer:
        merchants = [f"ttl-{unique}-{i}" for i in range(3)]
        writer.write(
            "merchant_transactions", merchants, _features(schema, "merchant_transactions", 3, 6), np.full(3, T0)
        )
    assert all(3590 <= client.ttl(_key("merchant_transactions", m)) <= 3600 for m in merchants)


def _sample(name: str, view: str) -> float:
    return REGISTRY.get_sample_value(name, {"view": view}) or 0.0


def test_retries_while_redis_is_paused(
    settings: Settings, store: FeatureStore, client: redis.Redis, schema: Schema, unique: str
) -> None:
    """CLIENT PAUSE WRITE holds our HSETs past the socket timeout: the writer retries until Redis resumes."""
    retries_before = _sample("streamscore_online_write_retries_total", "merchant_transactions")
    with OnlineWriter(settings, store, attempts=30, backoff_s=0.02, max_backoff_s=0.1, socket_timeout_s=0.1) as writer:
        writer.write(
            "merchant_transactions", ["warm"], _features(schema, "merchant_transactions", 1, 7), np.array([T0])
        )
        merchant = f"paused-{unique}"
        features = _features(schema, "merchant_transactions", 1, 8)
        client.execute_command("CLIENT", "PAUSE", 400, "WRITE")
        try:
            started = time.monotonic()
            assert writer.write("merchant_transactions", [merchant], features, np.array([T0])) == 1
            elapsed = time.monotonic() - started
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
        assert writer.last_attempts > 1
        assert elapsed >= 0.2
    assert _sample("streamscore_online_write_retries_total", "merchant_transactions") > retries_before
    got = _read(store, ["nobody"], [merchant])
    for name, values in features.items():
        assert got[f"merchant_transactions__{name}"] == values.tolist()


def test_gives_up_after_the_last_attempt(settings: Settings, store: FeatureStore, schema: Schema) -> None:
    nowhere = settings.model_copy(update={"redis": RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0")})
    with OnlineWriter(nowhere, attempts=3, backoff_s=0.01, max_backoff_s=0.02) as writer:
        features = _features(schema, "merchant_transactions", 1, 9)
        with pytest.raises(redis.ConnectionError):
            writer.write("merchant_transactions", ["m"], features, np.array([T0]))
        assert writer.last_attempts == 3


def test_metrics_count_rows_and_time_writes(writer: OnlineWriter, schema: Schema, unique: str) -> None:
    rows_before = _sample("streamscore_online_rows_written_total", "merchant_transactions")
    count_before = _sample("streamscore_online_write_seconds_count", "merchant_transactions")
    merchants = [f"metrics-{unique}-{i}" for i in range(5)]
    writer.write("merchant_transactions", merchants, _features(schema, "merchant_transactions", 5, 10), np.full(5, T0))
    assert _sample("streamscore_online_rows_written_total", "merchant_transactions") == rows_before + 5
    assert _sample("streamscore_online_write_seconds_count", "merchant_transactions") == count_before + 1


def test_empty_batch_writes_nothing(writer: OnlineWriter) -> None:
    empty = {name: np.array([], dtype=np.float64) for name in writer.views["merchant_transactions"]}
    assert writer.write("merchant_transactions", [], empty, np.array([], dtype=np.int64)) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f, i, x: {**f, "typo": np.zeros(2)}, "unknown \\['typo'\\]"),
        (lambda f, i, x: {k: v for k, v in f.items() if k != x}, "missing"),
        (lambda f, i, x: {**f, x: np.zeros(3)}, "shape"),
        (lambda f, i, x: {**f, i: np.array([1.5, 2.0])}, "fractional"),
        (lambda f, i, x: {**f, i: np.array(["1", "2"])}, "is Int64"),
        (lambda f, i, x: {**f, x: np.array(["1", "2"])}, "is Float64"),
    ],
    ids=["unknown", "missing", "shape", "fractional", "str-int", "str-float"],
)
def test_rejects_malformed_batches(writer: OnlineWriter, schema: Schema, change: Any, message: str) -> None:
    features = _features(schema, "merchant_transactions", 2, 11)
    an_int, a_float = _ints(schema, "merchant_transactions")[0], _floats(schema, "merchant_transactions")[0]
    with pytest.raises(ValueError, match=message):
        writer.write("merchant_transactions", ["a", "b"], change(features, an_int, a_float), np.full(2, T0))


def test_rejects_unknown_views_and_bad_timestamps(writer: OnlineWriter, schema: Schema) -> None:
    features = _features(schema, "merchant_transactions", 1, 12)
    with pytest.raises(ValueError, match="unknown view 'nope'"):
        writer.write("nope", ["a"], features, np.array([T0]))
    with pytest.raises(ValueError, match="event_ts"):
        writer.write("merchant_transactions", ["a"], features, np.array([1.5]))
