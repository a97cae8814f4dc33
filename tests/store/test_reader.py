"""OnlineReader against the session's real Redis and Feast's own ``get_online_features`` on the same keys.

The reader must return exactly what Feast returns (None as NaN + ``missing``), per feature and row, for random
batches with unknown and repeated entities, null values, entities present in one view only, values older than
the view TTL, and rows Feast wrote itself; in one pipelined round trip. The decoders are also checked against
the protobuf library directly, without Redis.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
from feast import FeatureService, FeatureStore
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import feast_value_type_to_python_type
from feast.types import Int64
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from streamscore.settings import Settings
from streamscore.store import OnlineWriter, apply_definitions, feature_store, quiet_feast
from streamscore.store.decoding import decode_timestamps, decode_values
from streamscore.store.layout import redis_keys
from streamscore.store.reader import OnlineBatch, OnlineReader
from streamscore.training.dataset import service_features
from tests.store.helpers import CountingConnection

pytestmark = pytest.mark.filterwarnings("ignore:Stream feature views are experimental:RuntimeWarning")
integration = pytest.mark.integration

SERVICE = "fraud_model_v1"
RUN = uuid.uuid4().hex[:8]  # every entity id of this module carries it: the session's Redis is shared
DAY_MS = 86_400_000
NOW_MS = int(time.time() * 1000)
OLD_MS = NOW_MS - 10 * DAY_MS  # older than both views' 2-day TTL


@dataclass
class Written:
    """What the module wrote: ids per view and the event time stored for each entity."""

    users: list[str]
    merchants: list[str]
    event_ms: dict[tuple[str, str], int]  # (view, entity) -> epoch ms

    def unknown(self, kind: str, i: int) -> str:
        return f"{kind}-{RUN}-nobody-{i}"


# ------------------------------------------------------------------------------------------------------------
# Fixtures: a registry of our own, data written by OnlineWriter and by Feast
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iso(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The session's Redis with a registry of this module's own."""
    isolated = settings.model_copy(update={"data_dir": tmp_path_factory.mktemp("reader")})
    apply_definitions(isolated)
    return isolated


@pytest.fixture(scope="module")
def store(iso: Settings) -> FeatureStore:
    return feature_store(iso)


@pytest.fixture(scope="module")
def reader(iso: Settings, store: FeatureStore) -> Iterator[OnlineReader]:
    with OnlineReader(iso, SERVICE, store) as r:
        yield r


@pytest.fixture(scope="module")
def schema(store: FeatureStore) -> dict[str, dict[str, bool]]:
    """view -> feature -> is Int64, from the registered service."""
    with quiet_feast():
        service = store.get_feature_service(SERVICE)
    return {p.name: {f.name: f.dtype == Int64 for f in p.features} for p in service.feature_view_projections}


def _features(schema: dict[str, dict[str, bool]], view: str, n: int, rng: np.random.Generator) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, is_int in schema[view].items():
        column = rng.integers(-5, 1000, n).astype(np.float64) if is_int else rng.normal(50.0, 80.0, n)
        column[rng.random(n) < 0.1] = np.nan  # null values, ints included
        out[name] = column
    return out


@pytest.fixture(scope="module")
def written(iso: Settings, store: FeatureStore, schema: dict[str, dict[str, bool]]) -> Written:
    rng = np.random.default_rng(17)
    users = [f"u-{RUN}-{i}" for i in range(400)]
    merchants = [f"m-{RUN}-{i}" for i in range(60)]
    event_ms: dict[tuple[str, str], int] = {}
    with OnlineWriter(iso, store) as writer:
        for view, ids in (("user_transactions", users), ("merchant_transactions", merchants)):
            features = _features(schema, view, len(ids), rng)
            first = next(iter(features))
            features[first][:3] = np.nan  # the first entities: every value null, the hash still there
            for other in features:
                features[other][:3] = np.nan
            stamps = rng.integers(OLD_MS, NOW_MS, len(ids))
            stamps[::5] = OLD_MS  # a fifth of them are outside the view's TTL
            writer.write(view, ids, features, stamps)
            event_ms.update({(view, e): int(t) for e, t in zip(ids, stamps, strict=True)})

    # A few users written by Feast's own write path (its bytes, its null handling).
    feast_users = [f"u-{RUN}-feast-{i}" for i in range(5)]
    features = _features(schema, "user_transactions", 5, rng)
    frame = pd.DataFrame(
        {"user_id": feast_users, "event_timestamp": pd.to_datetime(np.full(5, NOW_MS - 1234), unit="ms", utc=True)}
    )
    frame = frame.assign(**{name: column for name, column in features.items()})
    with quiet_feast():
        store.write_to_online_store("user_transactions", frame)
    event_ms.update({("user_transactions", u): NOW_MS - 1234 for u in feast_users})
    return Written([*users, *feast_users], merchants, event_ms)


def _feast(store: FeatureStore, service: str, rows: dict[str, list[str]]) -> dict[str, list[Any]]:
    with quiet_feast():
        features = store.get_feature_service(service)
        result: dict[str, list[Any]] = store.get_online_features(
            features=features, entity_rows=rows, full_feature_names=True
        ).to_dict(include_event_timestamps=True)
    return result


# batch view -> (request column, registered view): how to find what was written for a row
DEFAULT_KEYS = {"user_transactions": ("user_id", "user_transactions"),
                "merchant_transactions": ("merchant_id", "merchant_transactions")}  # fmt: skip


def _assert_same_as_feast(
    store: FeatureStore,
    service: str,
    batch: OnlineBatch,
    rows: dict[str, list[str]],
    written: Written,
    keys: dict[str, tuple[str, str]] = DEFAULT_KEYS,
) -> None:
    """Value for value, row for row; event times as written (Feast only has their seconds, 0 where absent)."""
    feast = _feast(store, service, rows)
    with quiet_feast():
        order = service_features(store, service)
    assert batch.names == tuple(name for _, name in order)
    n = len(next(iter(rows.values())))
    assert batch.values.shape == batch.missing.shape == (n, len(order))
    assert batch.values.dtype == np.float64
    for j, (view, name) in enumerate(order):
        theirs = feast[f"{view}__{name}"]
        for i, value in enumerate(theirs):
            ours, missing = batch.values[i, j], batch.missing[i, j]
            if value is None:
                assert missing, (view, name, i)
                assert np.isnan(ours), (view, name, i)
            else:
                assert not missing, (view, name, i)
                assert ours == float(value) or (np.isnan(ours) and np.isnan(value)), (view, name, i, value, ours)
        seconds = feast[f"{view}__{name}__ts"]
        column = batch.views.index(view)
        stamps = batch.event_ms[:, column]
        assert [s // 1000 if s >= 0 else 0 for s in stamps.tolist()] == seconds, (view, name)
    for column, view in enumerate(batch.views):
        request_key, registered = keys[view]
        expected = [written.event_ms.get((registered, entity), -1) for entity in rows[request_key]]
        assert batch.event_ms[:, column].tolist() == expected, view


def _columns(reader: OnlineReader, view: str) -> list[int]:
    with quiet_feast():
        order = service_features(reader.store, reader.feature_service)
    return [j for j, (v, _) in enumerate(order) if v == view]


# ------------------------------------------------------------------------------------------------------------
# Against Feast
# ------------------------------------------------------------------------------------------------------------


@integration
def test_plan_is_the_services_order(reader: OnlineReader, store: FeatureStore) -> None:
    with quiet_feast():
        order = service_features(store, SERVICE)
    assert reader.names == tuple(name for _, name in order)
    assert reader.views == ("user_transactions", "merchant_transactions")
    assert reader.entity_keys == ("user_id", "merchant_id")
    assert reader.ttl_ms == (2 * DAY_MS, 2 * DAY_MS)


@integration
@pytest.mark.parametrize("seed", range(12))
def test_random_batches_equal_feast(reader: OnlineReader, store: FeatureStore, written: Written, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 160))
    pool_users = [*written.users, *(written.unknown("u", i) for i in range(20))]
    pool_merchants = [*written.merchants, *(written.unknown("m", i) for i in range(5))]
    # Drawn with replacement from pools not much bigger than the batch: repeats are common.
    users = [pool_users[i] for i in rng.integers(0, len(pool_users), n)]
    merchants = [pool_merchants[i] for i in rng.integers(0, len(pool_merchants), n)]
    if n > 2:
        users[1] = users[0]  # a repeat for sure
        merchants[2] = written.unknown("m", 99)  # a known user with an unknown merchant
    rows = {"user_id": users, "merchant_id": merchants}
    batch = reader.read(rows)
    _assert_same_as_feast(store, SERVICE, batch, rows, written)


@integration
def test_nulls_unknowns_and_feast_written_rows(reader: OnlineReader, store: FeatureStore, written: Written) -> None:
    all_null_user, feast_user = written.users[0], written.users[-1]
    rows = {
        "user_id": [all_null_user, feast_user, written.unknown("u", 1), feast_user, written.users[7]],
        "merchant_id": [written.merchants[5], written.unknown("m", 1), written.merchants[6], written.merchants[0], ""],
    }
    batch = reader.read(rows)
    _assert_same_as_feast(store, SERVICE, batch, rows, written)
    users = _columns(reader, "user_transactions")
    assert batch.missing[0, users].all()  # every value null ...
    assert batch.event_ms[0, 0] == written.event_ms[("user_transactions", all_null_user)]  # ... but written
    assert batch.missing[2, users].all()
    assert batch.event_ms[2, 0] == -1  # never written
    assert batch.event_ms[1, 1] == -1
    assert batch.missing[1, batch.names.index("merchant_amount_mean_24h")]


@integration
def test_values_older_than_the_ttl_are_returned_as_feast_does(
    reader: OnlineReader, store: FeatureStore, written: Written
) -> None:
    stale = [u for u in written.users[3:] if written.event_ms[("user_transactions", u)] == OLD_MS][:10]
    assert len(stale) == 10
    rows = {"user_id": stale, "merchant_id": written.merchants[3:13]}
    batch = reader.read(rows)
    _assert_same_as_feast(store, SERVICE, batch, rows, written)
    assert (batch.event_ms[:, 0] == OLD_MS).all()
    assert reader.ttl_ms[0] is not None
    assert reader.ttl_ms[0] < NOW_MS - OLD_MS
    assert (~batch.missing[:, _columns(reader, "user_transactions")]).any(axis=1).all()


@integration
def test_a_projection_with_alias_join_key_map_and_subset(
    iso: Settings, store: FeatureStore, written: Written, schema: dict[str, dict[str, bool]]
) -> None:
    """Feast's projections: a view renamed, its join key read from another request column, a feature subset."""
    user_features = sorted(schema["user_transactions"])[:3]
    with quiet_feast():
        users = store.get_stream_feature_view("user_transactions")
        merchants = store.get_stream_feature_view("merchant_transactions")
        service = FeatureService(
            name=f"projected_{RUN}",
            features=[
                merchants[["merchant_amount_mean_24h"]],
                users[user_features].with_name("u").with_join_key_map({"user_id": "card_id"}),
            ],
        )
        store.apply([service])
    with OnlineReader(iso, service.name, store) as projected:
        assert projected.views == ("merchant_transactions", "u")
        assert projected.entity_keys == ("merchant_id", "card_id")
        assert projected.names == ("merchant_amount_mean_24h", *user_features)
        rows = {"card_id": [written.users[10], written.users[11], "x"], "merchant_id": written.merchants[:3]}
        batch = projected.read(rows)
    keys = {"u": ("card_id", "user_transactions"), "merchant_transactions": DEFAULT_KEYS["merchant_transactions"]}
    _assert_same_as_feast(store, service.name, batch, rows, written, keys)


@integration
def test_one_round_trip_one_hmget_per_distinct_entity_and_view(
    iso: Settings, store: FeatureStore, written: Written, settings: Settings
) -> None:
    users = [written.users[i % 30] for i in range(100)]  # 30 distinct users
    merchants = [*written.merchants[:7], *(written.unknown("m", i % 3) for i in range(93))]  # 10 distinct
    distinct = len(set(users)) + len(set(merchants))
    with OnlineReader(iso, SERVICE, store) as reader, redis.Redis.from_url(settings.redis.url) as client:
        pool = reader.redis.connection_pool
        reader.redis.connection_pool = redis.ConnectionPool(
            connection_class=CountingConnection, **pool.connection_kwargs
        )
        reader.read({"user_id": users[:1], "merchant_id": merchants[:1]})  # connects (handshake commands)
        CountingConnection.events.clear()
        before = client.info("commandstats")
        reader.read({"user_id": users, "merchant_id": merchants})
        after = client.info("commandstats")
    assert CountingConnection.events == ["send"] + ["read"] * distinct

    def calls(stats: dict[str, Any], command: str) -> int:
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    assert calls(after, "hmget") - calls(before, "hmget") == distinct
    changed = {k for k in after if k not in ("cmdstat_hmget", "cmdstat_info") and after[k] != before.get(k)}
    assert changed == set()


@integration
def test_an_error_reply_is_raised_and_leaves_the_reader_usable(
    reader: OnlineReader, store: FeatureStore, written: Written, settings: Settings
) -> None:
    """Replies are read by hand: after an error mid-batch, no leftover reply may answer the next batch."""
    wrong = f"u-{RUN}-not-a-hash"
    with redis.Redis.from_url(settings.redis.url) as client:
        client.set(redis_keys("user_id", [wrong], reader.project)[0], b"x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        reader.read({"user_id": [written.users[5], wrong, written.users[6]], "merchant_id": written.merchants[:3]})
    rows = {"user_id": written.users[8:11], "merchant_id": written.merchants[3:6]}
    _assert_same_as_feast(store, SERVICE, reader.read(rows), rows, written)


@integration
def test_a_timeout_is_raised_and_the_next_read_is_right(
    iso: Settings, store: FeatureStore, written: Written, settings: Settings
) -> None:
    """CLIENT PAUSE holds the HMGETs past the socket timeout; their late replies must not answer the next read."""
    with OnlineReader(iso, SERVICE, store, socket_timeout_s=0.1) as reader:
        first = {"user_id": written.users[20:25], "merchant_id": written.merchants[:5]}
        reader.read(first)  # connected
        with redis.Redis.from_url(settings.redis.url) as client:
            client.execute_command("CLIENT", "PAUSE", 300, "ALL")
        with pytest.raises(redis.TimeoutError):
            reader.read(first)
        time.sleep(0.35)  # the pause ends by itself
        rows = {"user_id": written.users[30:40], "merchant_id": written.merchants[10:20]}
        _assert_same_as_feast(store, SERVICE, reader.read(rows), rows, written)


@integration
def test_threads_may_share_a_reader(reader: OnlineReader, written: Written) -> None:
    batches = [
        {"user_id": written.users[i : i + 50], "merchant_id": [written.merchants[i % 60]] * 50}
        for i in range(0, 300, 25)
    ]
    alone = [reader.read(batch) for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        shared = list(pool.map(reader.read, batches * 4))
    for i, batch in enumerate(shared):
        expected = alone[i % len(batches)]
        assert np.array_equal(batch.values, expected.values, equal_nan=True)
        assert np.array_equal(batch.event_ms, expected.event_ms)


@integration
def test_empty_batch_reads_nothing(reader: OnlineReader) -> None:
    batch = reader.read({"user_id": [], "merchant_id": []})
    assert batch.values.shape == batch.missing.shape == (0, len(reader.names))
    assert batch.event_ms.shape == (0, 2)


@integration
def test_rejects_malformed_requests(reader: OnlineReader) -> None:
    with pytest.raises(ValueError, match="lack join key"):
        reader.read({"user_id": ["a"]})
    with pytest.raises(ValueError, match="differ in length"):
        reader.read({"user_id": ["a", "b"], "merchant_id": ["m"]})
    with pytest.raises(TypeError, match="must be str"):
        reader.read({"user_id": [1, 2], "merchant_id": ["m", "n"]})  # type: ignore[list-item]


@integration
def test_unknown_service(iso: Settings, store: FeatureStore) -> None:
    with pytest.raises(Exception, match="nope"):
        OnlineReader(iso, "nope", store)


# ------------------------------------------------------------------------------------------------------------
# The decoders against the protobuf library (no Redis)
# ------------------------------------------------------------------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Every varint length from 1 to 10 bytes, at both of its ends.
EDGES = [0, -1, 2**63 - 1, -(2**63), *(v for k in range(1, 10) for v in (2 ** (7 * k) - 1, 2 ** (7 * k)) if v < 2**63)]


def _feast_value(cell: bytes | None) -> float | None:
    value = Value()
    value.ParseFromString(cell or b"")
    python = feast_value_type_to_python_type(value)
    return None if python is None else float(python)


def _check_values(cells: list[bytes | None]) -> None:
    values, missing = decode_values(cells)
    assert values.shape == missing.shape == (len(cells),)
    for cell, ours, null in zip(cells, values.tolist(), missing.tolist(), strict=True):
        theirs = _feast_value(cell)
        if theirs is None:
            assert null, cell
            assert np.isnan(ours), cell
        else:
            assert not null, cell
            assert ours == theirs or (np.isnan(ours) and np.isnan(theirs)), cell


@given(st.lists(INT64), st.lists(st.floats()))
def test_values_equal_protobuf(ints: list[int], doubles: list[float]) -> None:
    cells: list[bytes | None] = [Value(int64_val=v).SerializeToString() for v in [*ints, *EDGES]]
    cells += [Value(double_val=v).SerializeToString() for v in [*doubles, 0.0, -0.0, 5e-324, float("nan")]]
    cells += [None, b"", None]
    order = np.random.default_rng(len(cells)).permutation(len(cells))
    _check_values([cells[i] for i in order])


def test_other_numeric_encodings_take_the_slow_path() -> None:
    cells = [
        Value(int32_val=-7).SerializeToString(),
        Value(float_val=2.5).SerializeToString(),
        Value(bool_val=True).SerializeToString(),
        Value(int64_val=5).SerializeToString() + Value(double_val=1.5).SerializeToString(),  # last one wins
        Value(double_val=1.5).SerializeToString() + Value(int64_val=5).SerializeToString(),
        Value(int64_val=9).SerializeToString()[:1],  # a tag without its varint: protobuf rejects it
    ]
    with pytest.raises(Exception, match=r"(?i)error|truncat"):
        _check_values(cells[-1:])
    _check_values(cells[:-1])
    with pytest.raises(ValueError, match="not a number"):
        decode_values([Value(string_val="x").SerializeToString()])


@given(st.lists(st.integers(min_value=-(2**62), max_value=2**62)))
def test_timestamps_equal_protobuf(millis: list[int]) -> None:
    stamps = [Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000).SerializeToString() for ms in millis]
    cells: list[bytes | None] = [*stamps, None, b""]
    reversed_fields = b"\x10\x80\x84\xaf_\x08\x05"  # nanos before seconds: legal, parsed by the slow path
    assert decode_timestamps([*cells, reversed_fields]).tolist() == [*millis, -1, 0, 5200]


def test_decoders_take_any_sequence() -> None:
    assert decode_timestamps(()).tolist() == []
    values, missing = decode_values(())
    assert values.shape == missing.shape == (0,)
