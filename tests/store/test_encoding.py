"""The hand-built bytes equal the protobuf library's and Feast's, value for value (no Redis needed)."""

from __future__ import annotations

import numpy as np
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from streamscore.store.encoding import encode_doubles, encode_int64s, encode_timestamps
from streamscore.store.layout import redis_keys

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
EDGES = [0, 1, -1, 127, 128, 16383, 16384, 2**31, 2**62, 2**63 - 1, -(2**63)]


def _timestamp(ms: int) -> bytes:
    seconds, millis = divmod(ms, 1000)
    return Timestamp(seconds=seconds, nanos=millis * 1_000_000).SerializeToString()


@given(st.lists(st.floats(allow_nan=False, allow_infinity=True)))
def test_doubles_equal_protobuf(values: list[float]) -> None:
    values = [*values, 0.0, -0.0, 5e-324]
    assert encode_doubles(np.array(values)).tolist() == [Value(double_val=v).SerializeToString() for v in values]


def test_nan_is_feasts_null_value() -> None:
    assert encode_doubles(np.array([np.nan, 1.0])).tolist()[0] == Value().SerializeToString() == b""
    null = np.array([True, False])
    assert encode_int64s(np.array([7, 7]), null).tolist() == [b"", Value(int64_val=7).SerializeToString()]


@given(st.lists(INT64))
def test_int64s_equal_protobuf(values: list[int]) -> None:
    values = [*values, *EDGES]
    assert encode_int64s(np.array(values, dtype=np.int64)).tolist() == [
        Value(int64_val=v).SerializeToString() for v in values
    ]


@given(st.lists(st.integers(min_value=-(10**14), max_value=10**14)))
def test_timestamps_equal_protobuf(values: list[int]) -> None:
    values = [*values, 0, 999, 1000, -1, -999, -1000, -1001, 1_700_000_000_000]
    assert encode_timestamps(np.array(values, dtype=np.int64)).tolist() == [_timestamp(ms) for ms in values]


def test_timestamps_equal_feasts_conversion_of_datetimes() -> None:
    """Feast builds its Timestamp with FromDatetime from the DataFrame's datetime: same bytes as ours from ms."""
    ms = np.array([1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_999, 86_400_000, -1], dtype=np.int64)
    expected = []
    for value in ms.astype("datetime64[ms]").astype(object):
        ts = Timestamp()
        ts.FromDatetime(value)
        expected.append(ts.SerializeToString())
    assert encode_timestamps(ms).tolist() == expected


@given(st.lists(st.text()))
def test_keys_equal_feasts(ids: list[str]) -> None:
    expected = [
        _redis_key("streamscore", EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=i)]), 3) for i in ids
    ]
    assert redis_keys("user_id", ids, "streamscore").tolist() == expected
