"""The online reader: a FeatureService's features for a batch of score requests, in one Redis round trip.

Feast's ``get_online_features`` resolves the service against the registry, builds one ``EntityKey`` and one
``Value`` protobuf per entity and per value, and hands back Python objects: about 6 ms for 100 entities, most of
it Python, when the Redis round trip itself is under 1 ms. Inference scores a batch of requests at a time and
needs a float matrix, not a dict of lists. This reader compiles everything that does not change between
batches once (the murmur3 hash fields of each ``view:feature`` and the ``_ts:<view>`` field, already packed as
the tail of an ``HMGET`` command; output columns), sends one ``HMGET`` per (view, distinct entity) in one
pipelined write (one round trip, like ``pipeline(transaction=False)`` but without redis-py's per-argument
packing, see :meth:`OnlineReader._round_trip`), and decodes the replies column-wise with numpy instead of one
protobuf object per value (:mod:`~streamscore.store.decoding`).

It reads exactly what Feast's ``get_online_features(features=<service>)`` reads, value for value
(``tests/store/test_reader.py`` compares the two on the same Redis), including what Feast does *not* do:

* **The view TTL is not applied.** Feast 0.67's Redis online read (``RedisOnlineStore._read_features_per_fv``
  and ``utils._populate_response_from_feature_data``) returns every stored value with status ``PRESENT``,
  however old its ``_ts``; the view ``ttl`` bounds only the offline point-in-time join. (Only the
  ``precompute_online`` fast path, which this project does not use, marks a value ``OUTSIDE_MAX_AGE``, and
  even then returns it.) What does make values disappear online is the store's ``key_ttl_seconds``: Redis
  expires the whole entity hash, and both Feast and this reader then see no value. A caller that wants a
  staleness rule has ``OnlineBatch.event_ms`` and ``OnlineReader.ttl_ms`` to apply its own.
* A value Feast returns as ``None`` (no hash for the entity, no field, or the empty ``Value`` a null is
  written as) is ``NaN`` with ``missing`` set; a stored ``NaN`` double is ``NaN`` with ``missing`` clear.
  Int64 features, which Feast returns as ``int``, are ``float64`` here (exact up to 2**53).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from feast import FeatureStore, FeatureView
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from prometheus_client import Histogram

from streamscore.settings import Settings
from streamscore.store.config import feature_store, quiet_feast
from streamscore.store.decoding import Cells, decode_timestamps_at, decode_values_at

# The writer's layout, not a copy of it: the reader must build the very keys and fields the writer writes.
from streamscore.store.layout import ViewLayout, redis_client, redis_keys, view_layout

__all__ = ["OnlineBatch", "OnlineReader"]

READ_SECONDS = Histogram(
    "streamscore_online_read_seconds",
    "Time of one OnlineReader.read: key building, the pipelined round trip and decoding",
    ["feature_service"],
    buckets=(0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


@dataclass(frozen=True, slots=True)
class OnlineBatch:
    """The features of one batch of requests, row ``i`` for request ``i``.

    Attributes:
        values: float64 ``[N, F]``, columns in FeatureService order (``names``); NaN where ``missing``.
        names: the feature names, the model's input order (what ``training.dataset.service_features`` lists).
        missing: bool ``[N, F]``: Feast would return ``None`` here (no stored value for the entity).
        views: the views of the service in order; the columns of ``event_ms``.
        event_ms: int64 ``[N, n_views]``: the event time (epoch ms) stored with the row's values of each view,
            -1 where the entity has no row in that view. Feast reports the epoch (0) there instead; -1 keeps
            "never written" apart from a real timestamp.
    """

    values: npt.NDArray[np.float64]
    names: tuple[str, ...]
    missing: npt.NDArray[np.bool_]
    views: tuple[str, ...]
    event_ms: npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class _ViewRead:
    """Everything about reading one projection of the service that does not change between batches."""

    name: str  # the projection's name_to_use(): what Feast prefixes full feature names with
    join_key: str  # the view's join key: part of the Redis key
    request_key: str  # the column of ``entities`` holding it (differs under a projection's join_key_map)
    fields: tuple[bytes, ...]  # the hash fields of the requested features, then the _ts field
    command_head: bytes  # an HMGET of these fields in RESP, up to the key ...
    command_tail: bytes  # ... and after it
    columns: slice  # the view's features in the output matrix
    value_offsets: npt.NDArray[np.intp]  # 0 .. len(fields) - 2: the value cells within one reply
    ttl_ms: int | None


def _view_read(
    name: str, layout: ViewLayout, features: list[str], join_key_map: Mapping[str, str], columns: slice, ttl: Any
) -> _ViewRead:
    hashes = {**layout.int64_fields, **layout.double_fields}
    unknown = [f for f in features if f not in hashes]
    if unknown:
        raise ValueError(f"view {name!r} has no stored feature(s) {unknown}")
    ttl_ms = int(ttl.total_seconds() * 1000) if ttl else None
    fields = (*(hashes[f] for f in features), layout.ts_field)
    return _ViewRead(
        name=name,
        join_key=layout.join_key,
        request_key=join_key_map.get(layout.join_key, layout.join_key),
        fields=fields,
        command_head=b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2),
        command_tail=b"\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(field), field) for field in fields),
        columns=columns,
        value_offsets=np.arange(len(features), dtype=np.intp),
        ttl_ms=ttl_ms,
    )


class OnlineReader:
    """Reads the features of ``feature_service`` for batches of entities, one pipelined round trip per batch.

    The service is resolved from the registry once, here: re-apply definitions, then build a new reader. Only
    views with one String join key and Int64/Float64 features (what :class:`OnlineWriter` writes) can be read;
    an on-demand view in the service is refused here rather than silently left out. A reader may be shared by
    threads: each ``read`` borrows its own connection from redis-py's (thread-safe) pool.

    Args:
        settings: the streamscore settings; used to build the store when none is given.
        feature_service: the registered FeatureService whose features are read, in its order.
        store: the Feast store whose registry and Redis online store to use.
        socket_timeout_s: Redis connect and read timeout, unless the connection string sets its own. A scoring
            request has a deadline, so a read fails instead of hanging; there is no retry either (the caller
            decides whether to score with defaults or fail the batch).
    """

    def __init__(
        self,
        settings: Settings,
        feature_service: str,
        store: FeatureStore | None = None,
        *,
        socket_timeout_s: float = 1.0,
    ) -> None:
        if socket_timeout_s <= 0:
            raise ValueError(f"socket_timeout_s must be positive, got {socket_timeout_s}")
        self.settings = settings
        self.store = store if store is not None else feature_store(settings)
        self.feature_service = feature_service
        config = self.store.config
        online = config.online_store
        if not isinstance(online, RedisOnlineStoreConfig):
            raise ValueError(f"OnlineReader needs Feast's redis online store, the store uses {online.type!r}")
        if config.entity_key_serialization_version != 3:
            raise ValueError(
                f"OnlineReader builds version 3 entity keys, the store uses {config.entity_key_serialization_version}"
            )
        self.project: str = config.project
        versioning = bool(config.registry.enable_online_feature_view_versioning)

        views: list[_ViewRead] = []
        names: list[str] = []
        with quiet_feast():
            service = self.store.get_feature_service(feature_service)
            for projection in service.feature_view_projections:
                view = self.store.registry.get_any_feature_view(projection.name, self.project, allow_cache=True)
                if not isinstance(view, FeatureView):
                    raise ValueError(f"{feature_service!r}: {projection.name!r} is not a stored feature view")
                layout = view_layout(view, versioning)
                if isinstance(layout, str):
                    raise ValueError(f"{feature_service!r}: {layout}")
                features = [field.name for field in projection.features]
                columns = slice(len(names), len(names) + len(features))
                shown: str = projection.name_to_use()  # type: ignore[no-untyped-call]  # alias, else the view's name
                views.append(_view_read(shown, layout, features, projection.join_key_map, columns, view.ttl))
                names.extend(features)
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"{feature_service!r} names feature(s) {duplicated} more than once")
        self._views = tuple(views)
        self.names: tuple[str, ...] = tuple(names)
        self.views: tuple[str, ...] = tuple(v.name for v in views)
        self.ttl_ms: tuple[int | None, ...] = tuple(v.ttl_ms for v in views)  # not applied: see the module doc
        self.entity_keys: tuple[str, ...] = tuple(dict.fromkeys(v.request_key for v in views))
        self.redis = redis_client(online, socket_timeout_s)
        self._seconds = READ_SECONDS.labels(feature_service)

    def read(self, entities: Mapping[str, Sequence[str]]) -> OnlineBatch:
        """The features of each request row: ``entities`` maps each join key (``entity_keys``) to one value per row.

        Every (view, distinct entity) is one ``HMGET``, all of them in one pipeline: a repeated entity is read
        once. Other keys in ``entities`` are ignored, as Feast ignores them. Redis errors are raised as they are.
        """
        started = time.perf_counter()
        n = self._rows(entities)
        width = len(self.names)
        if n == 0:
            return OnlineBatch(
                np.empty((0, width)),
                self.names,
                np.empty((0, width), np.bool_),
                self.views,
                np.empty((0, len(self.views)), np.int64),
            )

        inverses: list[npt.NDArray[np.intp]] = []
        commands: list[bytes] = []
        for view in self._views:
            distinct: dict[str, int] = {}
            positions = [distinct.setdefault(value, len(distinct)) for value in entities[view.request_key]]
            inverses.append(np.array(positions, dtype=np.intp))
            try:
                keys: list[bytes] = redis_keys(view.join_key, list(distinct), self.project).tolist()
            except AttributeError:
                raise TypeError(f"{view.request_key!r} values must be str") from None
            head, tail = view.command_head, view.command_tail
            commands += [b"%s$%d\r\n%s%s" % (head, len(key), key, tail) for key in keys]
        replies = self._round_trip(commands)

        # Replies are laid out view after view, one reply of len(fields) cells per distinct entity, the _ts
        # cell last: index the value cells and the _ts cells of all views, and decode each kind in one go.
        cells = Cells.of(list(chain.from_iterable(replies)))
        value_parts: list[npt.NDArray[np.intp]] = []
        ts_parts: list[npt.NDArray[np.intp]] = []
        first = 0
        for view, inverse in zip(self._views, inverses, strict=True):
            stride = len(view.fields)
            replies_start = first + stride * np.arange(int(inverse.max()) + 1)
            value_parts.append((replies_start[:, None] + view.value_offsets).ravel())
            ts_parts.append(replies_start + (stride - 1))
            first += replies_start.shape[0] * stride
        decoded, null = decode_values_at(cells, np.concatenate(value_parts))
        stamps = decode_timestamps_at(cells, np.concatenate(ts_parts))

        values = np.empty((n, width))
        missing = np.empty((n, width), dtype=np.bool_)
        event_ms = np.empty((n, len(self._views)), dtype=np.int64)
        value_at = ts_at = 0
        for column, (view, inverse, ts_index) in enumerate(zip(self._views, inverses, ts_parts, strict=True)):
            count = ts_index.shape[0]
            span = count * view.value_offsets.shape[0]
            shape = (count, view.value_offsets.shape[0])
            values[:, view.columns] = decoded[value_at : value_at + span].reshape(shape)[inverse]
            missing[:, view.columns] = null[value_at : value_at + span].reshape(shape)[inverse]
            event_ms[:, column] = stamps[ts_at : ts_at + count][inverse]
            value_at += span
            ts_at += count
        self._seconds.observe(time.perf_counter() - started)
        return OnlineBatch(values, self.names, missing, self.views, event_ms)

    def _round_trip(self, commands: list[bytes]) -> list[list[bytes | None]]:
        """Send ``commands`` (packed RESP) in one write, then read every reply in order: one pipelined round trip.

        This is what ``redis.pipeline(transaction=False).execute()`` does, minus its cost: redis-py packs every
        argument of every command and parses each reply through three layers of Python, about 5 us per HMGET,
        which for a 100-request batch is twice the round trip itself. The commands here are packed from
        per-view prefixes and suffixes compiled once; the replies are still read by redis-py's (hiredis) parser.
        Like the pipeline, a connection error or timeout is raised, not retried.
        """
        pool = self.redis.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_packed_command([b"".join(commands)])
            return [connection.read_response() for _ in commands]
        except BaseException:
            connection.disconnect()  # replies left unread would be the next caller's answers
            raise
        finally:
            pool.release(connection)

    def _rows(self, entities: Mapping[str, Sequence[str]]) -> int:
        absent = [key for key in self.entity_keys if key not in entities]
        if absent:
            raise ValueError(
                f"entities lack join key(s) {absent}; {self.feature_service!r} needs {list(self.entity_keys)}"
            )
        sizes = {key: len(entities[key]) for key in self.entity_keys}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"join key columns differ in length: {sizes}")
        return next(iter(sizes.values()), 0)

    def close(self) -> None:
        """Close the Redis connections."""
        self.redis.close()

    def __enter__(self) -> OnlineReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
