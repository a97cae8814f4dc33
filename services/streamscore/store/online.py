"""The online writer: computed features into Redis in exactly Feast's layout, one round trip per batch.

Feast's ``online_write_batch`` reads every row's stored ``_ts`` before writing and silently drops a row whose
timestamp is not newer. For a stream processor that is wrong twice over: a corrected aggregate for the same
window end must replace the old value, and replaying a batch after a crash must leave the same state. This
writer never reads: it ``HSET``s each entity's fields (an ``HSET`` of the values already there changes nothing,
so a replay is idempotent by construction) in one non-transactional pipeline, with the same keys, field hashes
and value bytes Feast writes (:mod:`~streamscore.store.layout`), so Feast's ``get_online_features`` reads the
result unchanged.

Order between writers is the caller's concern: the last write of an entity wins, as in Feast's own
``skip_dedup`` mode. A stream processor partitions by entity, so one writer owns each entity.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import redis
from feast import FeatureStore
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from prometheus_client import Counter, Histogram
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from streamscore.settings import Settings
from streamscore.store.config import feature_store, quiet_feast
from streamscore.store.encoding import encode_doubles, encode_int64s, encode_timestamps
from streamscore.store.layout import ViewLayout, redis_client, redis_keys, view_layout

__all__ = ["OnlineWriter"]

WRITE_SECONDS = Histogram(
    "streamscore_online_write_seconds",
    "Time of one OnlineWriter.write: encoding, the pipelined round trip and any retries",
    ["view"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ROWS_WRITTEN = Counter("streamscore_online_rows_written", "Entity rows written to the online store", ["view"])
WRITE_RETRIES = Counter(
    "streamscore_online_write_retries", "Pipelines sent again after a Redis connection error or timeout", ["view"]
)

_RETRIABLE = (redis.ConnectionError, redis.TimeoutError)


def _column(values: Any, n: int, name: str) -> npt.NDArray[Any]:
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != n:
        raise ValueError(f"feature {name!r} has shape {array.shape}, expected ({n},) like entity_ids")
    return array


def _int64_column(values: Any, n: int, name: str) -> npt.NDArray[np.object_]:
    array = _column(values, n, name)
    if array.dtype.kind in "iu":
        return encode_int64s(array.astype(np.int64, copy=False))
    if array.dtype.kind == "f":  # NaN is how a batch says "no value" in an integer column
        null = np.isnan(array)
        filled = np.where(null, 0.0, array)
        if not (np.isfinite(filled).all() and np.array_equal(filled, np.trunc(filled))):
            raise ValueError(f"feature {name!r} is Int64 but has fractional or infinite values")
        return encode_int64s(filled.astype(np.int64), null)
    raise ValueError(f"feature {name!r} is Int64, got a {array.dtype} array")


def _double_column(values: Any, n: int, name: str) -> npt.NDArray[np.object_]:
    array = _column(values, n, name)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"feature {name!r} is Float64, got a {array.dtype} array")
    return encode_doubles(array.astype(np.float64, copy=False))


def _epoch_ms(event_ts: Any, n: int) -> npt.NDArray[np.int64]:
    array = np.asarray(event_ts)
    if array.ndim != 1 or array.shape[0] != n:
        raise ValueError(f"event_ts has shape {array.shape}, expected ({n},) like entity_ids")
    if array.dtype.kind == "M":
        return array.astype("datetime64[ms]").view(np.int64)
    if array.dtype.kind not in "iu":
        raise ValueError(f"event_ts must be int64 epoch milliseconds, got a {array.dtype} array")
    return array.astype(np.int64, copy=False)


class OnlineWriter:
    """Writes feature batches for the Feast views of ``store`` (default: :func:`feature_store` of ``settings``).

    The views are resolved from the registry once, here: re-apply definitions, then restart the writer.

    Args:
        settings: the streamscore settings; used to build the store when none is given.
        store: the Feast store whose registry and Redis online store to use.
        attempts: how many times one batch is sent before its Redis error is raised.
        backoff_s: the first wait between attempts; it doubles each time, up to ``max_backoff_s``.
        socket_timeout_s: Redis connect and read timeout, unless the connection string sets its own.
    """

    def __init__(
        self,
        settings: Settings,
        store: FeatureStore | None = None,
        *,
        attempts: int = 5,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        socket_timeout_s: float = 5.0,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        if backoff_s < 0 or max_backoff_s < backoff_s:
            raise ValueError(f"need 0 <= backoff_s <= max_backoff_s, got {backoff_s} and {max_backoff_s}")
        if socket_timeout_s <= 0:
            raise ValueError(f"socket_timeout_s must be positive, got {socket_timeout_s}")
        self.settings = settings
        self.store = store if store is not None else feature_store(settings)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.socket_timeout_s = socket_timeout_s

        config = self.store.config
        online = config.online_store
        if not isinstance(online, RedisOnlineStoreConfig):
            raise ValueError(f"OnlineWriter needs Feast's redis online store, the store uses {online.type!r}")
        self.project: str = config.project
        self.key_ttl_seconds: int | None = online.key_ttl_seconds
        versioning = bool(config.registry.enable_online_feature_view_versioning)
        with quiet_feast():
            views = [*self.store.list_stream_feature_views(), *self.store.list_feature_views()]
        layouts = {view.name: view_layout(view, versioning) for view in views if view.online}
        self._layouts = {name: layout for name, layout in layouts.items() if isinstance(layout, ViewLayout)}
        self._unwritable = {name: layout for name, layout in layouts.items() if isinstance(layout, str)}
        self.redis = redis_client(online, socket_timeout_s)
        # Safe to reuse across writes from one thread; the writer as a whole is not meant to be shared by threads.
        self._retrying = Retrying(
            retry=retry_if_exception_type(_RETRIABLE),
            wait=wait_exponential(multiplier=backoff_s, min=backoff_s, max=max_backoff_s),
            stop=stop_after_attempt(attempts),
            reraise=True,
        )
        self.last_attempts = 0  # tries the last write took: 1 unless Redis failed in between

    @property
    def views(self) -> dict[str, list[str]]:
        """Each writable view's feature names, sorted: exactly the keys ``write`` expects in ``features``."""
        return {name: sorted([*v.int64_fields, *v.double_fields]) for name, v in sorted(self._layouts.items())}

    def write(
        self,
        view: str,
        entity_ids: Sequence[str],
        features: Mapping[str, npt.ArrayLike],
        event_ts: npt.ArrayLike,
    ) -> int:
        """Write one row per entity to ``view`` and return how many rows were written.

        ``entity_ids[i]`` is the value of the view's join key; ``features`` holds one array per feature of the
        view, all of them (a partial row would pair fresh values with stale ones under one timestamp):
        ``features[name][i]`` is entity i's value, int64 for Int64 features and float64 for Float64 ones, NaN
        meaning "no value" (read back as None). ``event_ts`` is epoch milliseconds per row (or datetime64). An
        entity listed twice keeps its last row. Redis connection errors and timeouts are retried with exponential
        backoff, the whole batch each time (safe, because the writes are idempotent), and raised after
        ``attempts`` tries.
        """
        layout = self._layouts.get(view)
        if layout is None:
            known = ", ".join(sorted(self._layouts)) or "none"
            raise ValueError(self._unwritable.get(view, f"unknown view {view!r} (writable views: {known})"))
        started = time.perf_counter()
        n = len(entity_ids)
        expected = layout.int64_fields.keys() | layout.double_fields.keys()
        if features.keys() != expected:
            missing, unknown = sorted(expected - features.keys()), sorted(features.keys() - expected)
            raise ValueError(f"features of {view!r} must be exactly its own: missing {missing}, unknown {unknown}")
        timestamps = encode_timestamps(_epoch_ms(event_ts, n))

        # One row per HSET: key, then (field, value) pairs, then the _ts pair. Filled column by column.
        width = 2 * (len(expected) + 1) + 1
        table = np.empty((n, width), dtype=object)
        table[:, 0] = redis_keys(layout.join_key, entity_ids, self.project)
        column = 1
        for name, hashed in layout.int64_fields.items():
            table[:, column] = hashed
            table[:, column + 1] = _int64_column(features[name], n, name)
            column += 2
        for name, hashed in layout.double_fields.items():
            table[:, column] = hashed
            table[:, column + 1] = _double_column(features[name], n, name)
            column += 2
        table[:, column] = layout.ts_field
        table[:, column + 1] = timestamps
        commands: list[list[bytes]] = table.tolist()

        self.last_attempts = 0
        try:
            for attempt in self._retrying:
                with attempt:
                    self.last_attempts += 1
                    if self.last_attempts > 1:
                        WRITE_RETRIES.labels(view).inc()
                    self._send(commands)
        finally:
            WRITE_SECONDS.labels(view).observe(time.perf_counter() - started)
        ROWS_WRITTEN.labels(view).inc(n)
        return n

    def _send(self, commands: list[list[bytes]]) -> None:
        """One pipelined round trip; rebuilt on each attempt since a failed ``execute`` empties the pipeline."""
        ttl = self.key_ttl_seconds
        if not commands:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                # The flat key/field/value row as is: hset(mapping=...) would build a dict and unpack it again.
                pipe.execute_command("HSET", *command)  # type: ignore[no-untyped-call]  # untyped in types-redis
                if ttl:
                    pipe.expire(command[0], ttl)
            pipe.execute()

    def close(self) -> None:
        """Close the Redis connections."""
        self.redis.close()

    def __enter__(self) -> OnlineWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
