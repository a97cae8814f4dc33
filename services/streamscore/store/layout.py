"""Feast's Redis layout, the one contract between the writer, the reader and Feast itself.

:class:`~streamscore.store.online.OnlineWriter` writes Redis without Feast and
:class:`~streamscore.store.reader.OnlineReader` reads it without Feast, yet Feast's ``get_online_features`` must read
what the writer wrote and the reader must read what Feast wrote. That only holds while all three agree byte for
byte, so everything both paths must agree on lives here, once, in the shape Feast gives it in
``feast.infra.online_stores.helpers`` (``_redis_key``, ``_mmh3``) and ``RedisOnlineStore``:

* one hash per entity, keyed by the serialized ``EntityKey`` followed by the project name (:func:`redis_keys`);
* in it, one field per feature, named by the murmur3 hash of ``<view>:<feature>``, and one ``_ts:<view>`` field
  with the event time (:func:`view_layout`);
* the field values: serialized ``feast.types.Value`` and ``google.protobuf.Timestamp`` messages, whose tag bytes
  are below (:mod:`~streamscore.store.encoding` writes them, :mod:`~streamscore.store.decoding` reads them);
* the Redis server itself, found from the same connection string with Feast's own parser (:func:`redis_client`).

>>> redis_keys("user_id", ["u1"], "streamscore").tolist()
[b'\\x01\\x00\\x00\\x00\\x02\\x00\\x00\\x00\\x07\\x00\\x00\\x00user_id\\x02\\x00\\x00\\x00\\x02\\x00\\x00\\x00u1streamscore']
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import redis
from feast import FeatureView
from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType
from feast.types import Float64, Int64, String
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "DOUBLE_VAL",
    "INT64_VAL",
    "TS_NANOS",
    "TS_SECONDS",
    "ViewLayout",
    "redis_client",
    "redis_keys",
    "view_layout",
]

# Tag byte = field number << 3 | wire type (feast/types/Value.proto, google/protobuf/timestamp.proto). Both
# Value fields sit in a oneof, so protobuf writes them even when the value is 0: no zero special case.
DOUBLE_VAL = 5 << 3 | 1  # double_val, 64-bit little endian
INT64_VAL = 4 << 3 | 0  # int64_val, varint (a negative value takes 10 bytes, two's complement)
TS_SECONDS = 1 << 3 | 0  # Timestamp.seconds, varint, omitted when 0 (proto3 scalar)
TS_NANOS = 2 << 3 | 0  # Timestamp.nanos, varint, omitted when 0

_STRING = 2  # feast.types.ValueType.STRING, as serialize_entity_key writes it


def redis_keys(join_key: str, values: Sequence[str], project: str) -> npt.NDArray[np.object_]:
    """Feast's Redis key for each value of a single string join key.

    ``serialize_entity_key`` (version 3) of ``EntityKey(join_keys=[join_key], entity_values=[string_val])``
    followed by the project name, the layout of ``feast.infra.online_stores.helpers._redis_key``.
    """
    name = join_key.encode()
    head = struct.pack("<III", 1, _STRING, len(name)) + name + struct.pack("<I", _STRING)
    tail = project.encode()
    out = np.empty(len(values), dtype=object)
    encoded = [value.encode() for value in values]
    out[:] = [b"".join((head, len(raw).to_bytes(4, "little"), raw, tail)) for raw in encoded]
    return out


@dataclass(frozen=True, slots=True)
class ViewLayout:
    """Where one view's values live in an entity's hash; everything about it that does not change between batches."""

    name: str  # as registered: what callers pass to OnlineWriter.write()
    join_key: str
    int64_fields: dict[str, bytes]  # feature name -> mmh3("<view>:<feature>") hash field
    double_fields: dict[str, bytes]
    ts_field: bytes  # b"_ts:<view>"


def view_layout(view: FeatureView, enable_versioning: bool) -> ViewLayout | str:
    """The layout of a view, or why it cannot be stored this way (one String join key, Int64/Float64 features)."""
    stored_name = compute_versioned_name(view, enable_versioning)  # Feast's name in the Redis fields
    entity_columns = list(view.entity_columns)
    if len(entity_columns) != 1 or entity_columns[0].dtype != String:
        return f"view {view.name!r} must have exactly one String join key, has {[c.name for c in entity_columns]}"
    join_key = entity_columns[0].name
    int64_fields: dict[str, bytes] = {}
    double_fields: dict[str, bytes] = {}
    for field in view.features:
        if field.name == join_key:
            # Feast's StreamFeatureView.to_proto stores its schema (entity columns included) as its features, so a
            # view read back from the registry lists its join key as a feature. It is not one: the feature service
            # never asks for it, and the key of the hash already holds the value.
            continue
        hashed: bytes = _mmh3(f"{stored_name}:{field.name}")
        if field.dtype == Int64:
            int64_fields[field.name] = hashed
        elif field.dtype == Float64:
            double_fields[field.name] = hashed
        else:
            return f"view {view.name!r}: feature {field.name!r} is {field.dtype}, only Int64 and Float64 are written"
    return ViewLayout(view.name, join_key, int64_fields, double_fields, f"_ts:{stored_name}".encode())


def redis_client(config: RedisOnlineStoreConfig, socket_timeout_s: float) -> redis.Redis[bytes]:
    """A client for the Redis Feast reads, parsed from the same connection string with Feast's own parser.

    redis-py's built-in retry (3 retries, backoff up to 10 s, on by default since 6.0) is switched off so that
    the caller's own policy (the writer's one bounded retry, the reader's none) is the only one. Timeouts default
    to ``socket_timeout_s``: Feast's client has none, and a call blocked forever on a half-open socket would stall
    the stream processor or the scorer silently.
    """
    if config.redis_type != RedisType.redis:
        raise ValueError(f"OnlineWriter writes to a single Redis, not redis_type={config.redis_type.value}")
    nodes, params = RedisOnlineStore._parse_connection_string(config.connection_string)
    params.setdefault("socket_timeout", socket_timeout_s)
    params.setdefault("socket_connect_timeout", socket_timeout_s)
    return redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), retry=Retry(NoBackoff(), 0), **params)
