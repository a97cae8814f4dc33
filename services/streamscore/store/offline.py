"""Feast's DuckDB offline store with its point-in-time join done by DuckDB's ``ASOF JOIN``.

Training sets come from ``FeatureStore.get_historical_features``. Feast's DuckDB store answers it with a range
join (every feature row at or before each label row, within ``ttl``), ``row_number()`` over the matches and a join
back on a string-built row id. The range join's output grows with each entity's history within the ttl, so the
rate falls as the data grows: on fraud_model_v1 (2 cores), 8,000 label rows/s at 10k rows, 1,700/s at 100k.
``ASOF JOIN`` partitions both sides on the join keys, sorts them on time and merges, one match per label row:
70,000 rows/s at 10k (fixed costs), 320,000/s at 100k, the same frames (``python -m tests.benchmarks offline``).

This store is Feast's :class:`~feast.infra.offline_stores.duckdb.DuckDBOfflineStore` with only
``get_historical_features`` replaced: reads, writes, materialization, saved datasets and monitoring are Feast's
own code, and the join reads the tables through Feast's own reader, casts and renames them as Feast does, and
returns Feast's ibis-backed job, so column types and names come out as Feast's would. The answer is Feast's
answer, cell for cell (``tests/store/test_offline_store.py`` compares the two):

- the feature row of each view is the latest one whose event timestamp is at or before the entity timestamp
  and whose join keys equal the entity's (a null key matches nothing). A projection's ``join_key_map`` is applied
  key by key, as Feast's other offline stores read it; Feast's DuckDB store, given a map that names only some of
  a view's keys, joins on those alone and matches rows of any value of the others;
- ties on the event timestamp go to the newest created timestamp. DuckDB's ASOF picks any of several rows with
  the same timestamp (duckdb#25536), so the rows of each (join keys, event timestamp) are first cut to the one
  with the newest created timestamp, the order Feast's ``row_number()`` uses. A view without a created-timestamp
  column has no tie-break in Feast either;
- ``ttl``: a row older than ``entity_ts - ttl`` gives nulls (Feast keeps ``feature_ts + ttl >= entity_ts``, bound
  included). ASOF has one inequality, so ttl is applied after the join by nulling stale matches; the latest row
  is in the window exactly when any row is, so the answer is the same. A ttl of zero or none is no limit, as in
  Feast;
- every column of the entity frame is carried through, then each view's features in the order requested,
  named ``view__feature`` with ``full_feature_names``. Rows come back in the entity frame's order (Feast's come
  back in whatever order its hash join leaves them).

``filter_by_created_timestamp`` (created at or before the entity timestamp too) is a second inequality, which
ASOF cannot take: such requests go to Feast's own join. An entity frame given as SQL is refused with
NotImplementedError; Feast's DuckDB store cannot take one either (it fails reading the frame's columns).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final, Literal

import ibis  # type: ignore[import-untyped]
import numpy as np
import pandas as pd
from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.duckdb import (
    DuckDBOfflineStore,
    DuckDBOfflineStoreConfig,
    _read_data_source,  # Feast's reader: the same tables, formats and credentials as Feast's own join
    _validate_lance_feature_views,
    _write_data_source,
)
from feast.infra.offline_stores.ibis import IbisRetrievalJob
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig

__all__ = ["STORE_TYPE", "AsofDuckDBOfflineStore", "AsofDuckDBOfflineStoreConfig", "AsofRetrievalJob"]

STORE_TYPE: Final = "streamscore.store.offline.AsofDuckDBOfflineStore"
"""What ``offline_store: type:`` names to select this store (Feast imports it by this path)."""

_ROW = "__streamscore_entity_row"  # the entity frame's row number, to hand rows back in its order
_NEWEST = "__streamscore_newest"  # 0 on the newest created row of each (join keys, event timestamp)


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """Feast's DuckDB store configuration (staging location and its endpoint), under this store's type.

    A subclass, so that Feast's DuckDB monitoring methods, which check for their own configuration class,
    keep working.
    """

    type: Literal["streamscore.store.offline.AsofDuckDBOfflineStore"] = STORE_TYPE


class AsofRetrievalJob(IbisRetrievalJob):
    """Feast's ibis job (``to_df``, ``to_arrow``, on-demand views, ``persist``, ``metadata``) on the ASOF plan,
    which it can also show: :meth:`to_sql` is the DuckDB query that runs."""

    def to_sql(self) -> str:
        return str(ibis.to_sql(self.table, dialect="duckdb"))


class _View:
    """One feature view's side of the join: its rows under private column names, and its ttl.

    ibis expressions are typed ``Any``: ibis ships no type information.
    """

    def __init__(
        self,
        index: int,
        feature_view: FeatureView,
        feature_refs: list[str],
        full_feature_names: bool,
        repo: str,
        entity_ts: Any,
    ) -> None:
        source = feature_view.batch_source
        if source is None:
            raise ValueError(f"Feature view '{feature_view.name}' has no batch_source and cannot be queried.")
        table = _read_data_source(source, repo)
        for old_name, new_name in source.field_mapping.items():
            if old_name in table.columns:
                table = table.rename({new_name: old_name})
        timestamp_field: str = source.timestamp_field
        created: str | None = source.created_timestamp_column or None
        utc = ibis.expr.datatypes.Timestamp(timezone="UTC")
        table = table.mutate(**{c: table[c].cast(utc) for c in (timestamp_field, created) if c is not None})
        self.ttl: timedelta | None = feature_view.ttl or None  # Feast: a zero ttl is no ttl
        # Rows no entity row can take, later than the latest entity timestamp or stale for the earliest, only cost
        # time (one that is the latest of its entity would be nulled by the ttl anyway).
        keep = table[timestamp_field] <= entity_ts.max()
        if self.ttl is not None:
            keep &= table[timestamp_field] + ibis.interval(self.ttl) >= entity_ts.min()
        table = table.filter(keep)
        join_key_map = join_keys(feature_view)
        if created is not None:
            # ASOF takes any of several rows with one timestamp: keep the newest created, Feast's tie-break.
            newest = ibis.row_number().over(
                group_by=[*(table[k] for k in join_key_map), table[timestamp_field]], order_by=ibis.desc(table[created])
            )
            table = table.mutate(**{_NEWEST: newest})
            table = table.filter(table[_NEWEST] == 0)
        prefix = feature_view.projection.name_to_use()  # type: ignore[no-untyped-call]
        features = [ref.split(":")[1] for ref in feature_refs if ref.startswith(f"{prefix}:")]
        base = feature_view.projection.name_alias or feature_view.name
        self.names = [f"{base}__{f}" if full_feature_names else f for f in features]
        self.timestamp = f"__ts{index}"
        # Private names on the feature side, so no view's columns collide with the entity frame's or another's.
        self.keys = {f"__key{index}_{j}": entity_column for j, entity_column in enumerate(join_key_map.values())}
        self.table: Any = table.select(
            **{private: table[key] for private, key in zip(self.keys, join_key_map, strict=True)},
            **{self.timestamp: table[timestamp_field]},
            **{name: table[f] for name, f in zip(self.names, features, strict=True)},
        )

    def fresh(self, matched_ts: Any, entity_ts: Any) -> Any:
        """Whether the matched row is within the ttl (Feast: ``feature_ts + ttl >= entity_ts``); None: no ttl."""
        if self.ttl is None:
            return None
        return matched_ts + ibis.interval(self.ttl) >= entity_ts


def join_keys(feature_view: FeatureView) -> dict[str, str]:
    """Each join key of the view and the entity-frame column it matches: Feast's ``join_key_map`` where it names
    one (a projection's ``with_join_key_map``), the key itself otherwise (``offline_utils``, key by key)."""
    mapped = feature_view.projection.join_key_map or {}
    return {e.name: mapped.get(e.name, e.name) for e in feature_view.entity_columns}


def utc_timestamps(entity_df: pd.DataFrame, column: str) -> pd.Series:
    """The entity timestamps as Feast's DuckDB store takes them: strings and objects parsed as UTC, others as
    they are (timezone-naive ones then compare as UTC, DuckDB's session time zone under ibis)."""
    stamps = entity_df[column].infer_objects()
    if pd.api.types.is_string_dtype(stamps) or pd.api.types.is_object_dtype(stamps):
        stamps = pd.to_datetime(stamps, utc=True)
    return stamps


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    """Feast's DuckDB offline store whose ``get_historical_features`` joins with ``ASOF JOIN``.

    Select it with ``offline_store: {type: streamscore.store.offline.AsofDuckDBOfflineStore}``; every other
    method (``pull_latest_from_table_or_query``, ``pull_all_from_table_or_query``, ``offline_write_batch``,
    ``write_logged_features``, monitoring) is Feast's DuckDB store's.
    """

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        if filter_by_created_timestamp:
            # "created at or before the entity timestamp" is a second inequality: Feast's range join answers it.
            return DuckDBOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project, full_feature_names, True
            )
        if not isinstance(entity_df, pd.DataFrame):
            raise NotImplementedError(
                "the ASOF DuckDB offline store takes the entity rows as a pandas DataFrame, not as SQL "
                "(Feast's DuckDB store cannot take SQL either)"
            )
        _validate_lance_feature_views(feature_views)
        ts_column = offline_utils.infer_event_timestamp_from_entity_df(
            dict(zip(entity_df.columns, entity_df.dtypes, strict=True))
        )
        stamps = utc_timestamps(entity_df, ts_column)
        # A new frame: Feast's store rewrites the caller's timestamp column in place; this one leaves it alone.
        entity = entity_df.assign(**{ts_column: stamps, _ROW: np.arange(len(entity_df), dtype=np.int64)})
        entity_table = ibis.memtable(entity)
        entity_ts = entity_table[ts_column]

        repo = str(config.repo_path)
        views = [_View(i, fv, feature_refs, full_feature_names, repo, entity_ts) for i, fv in enumerate(feature_views)]
        joined = entity_table
        for view in views:
            right = view.table
            joined = joined.asof_join(
                right,
                on=entity_ts >= right[view.timestamp],
                predicates=[entity_table[column] == right[private] for private, column in view.keys.items()],
            )
        outputs: dict[str, Any] = {c: joined[c] for c in entity_df.columns}
        for view in views:
            fresh = view.fresh(joined[view.timestamp], joined[ts_column])
            for name in view.names:
                value = joined[name]
                outputs[name] = value if fresh is None else fresh.ifelse(value, ibis.null(value.type()))
        result = joined.select(**outputs, **{_ROW: joined[_ROW]}).order_by(_ROW).drop(_ROW)

        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        for odfv in odfvs:
            if odfv.mode == "substrait":  # as Feast's DuckDB store: ibis-native views run inside the query
                result = odfv.transform_ibis(result, full_feature_names)
        first, last = stamps.min(), stamps.max()
        return AsofRetrievalJob(
            result,
            [odfv for odfv in odfvs if odfv.mode != "substrait"],
            full_feature_names,
            metadata=RetrievalMetadata(
                features=feature_refs,
                keys=[c for c in entity_df.columns if c != ts_column],
                min_event_timestamp=as_datetime(first),
                max_event_timestamp=as_datetime(last),
            ),
            data_source_writer=_write_data_source,
            staging_location=config.offline_store.staging_location,
            staging_location_endpoint_override=config.offline_store.staging_location_endpoint_override,
            repo_path=repo,
        )


def as_datetime(stamp: object) -> datetime | None:
    return stamp.to_pydatetime() if isinstance(stamp, pd.Timestamp) else None
