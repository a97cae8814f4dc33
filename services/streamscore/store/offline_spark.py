"""Feast's DuckDB offline store with its point-in-time join run on Spark: training sets beyond one machine.

Select it with ``offline_store: {type: streamscore.store.offline_spark.SparkOfflineStore, spark_master: URL}`` (or
``STREAMSCORE_TRAINING__OFFLINE_STORE=spark``, whose master is ``features.spark_master``, the spark backfill's).
Only ``get_historical_features`` runs on Spark; every other method is Feast's DuckDB store's, as in the ASOF
store (:mod:`streamscore.store.offline`), and the answer is that store's answer cell for cell
(``tests/store/test_offline_store.py`` runs the same suite over both against Feast's own).

Spark has no ASOF join, and a range join (Feast's plan) grows with each entity's history. The join here is a
sort, the way Chronon and Tecton do it on Spark: per view, the entity rows and the feature rows are put in one
frame, partitioned by the join keys and ordered by (timestamp, feature rows before entity rows), and each entity
row takes ``last(feature row, ignorenulls)`` over the rows before it: the latest feature row at or before its
timestamp. The feature row travels as one struct, so a row whose values are null is still the row chosen, as in
Feast. The rest is the ASOF store's, for the same reasons:

- ties on the event timestamp go to the newest created timestamp (the feature rows of each (join keys, event
  timestamp) are first cut to that one, so the order of the sort is total);
- ``ttl`` nulls a match older than ``entity_ts - ttl`` (bound included); zero or none is no limit;
- a null join key matches nothing (feature rows with one are dropped before the sort); a ``join_key_map`` is
  applied key by key;
- the entity frame's columns come through unchanged from the caller's frame (only its timestamp column parsed
  as UTC, as the ASOF store does), then each view's features in the order requested, ``view__feature`` with
  ``full_feature_names``, rows in the entity frame's order.

Only the entity rows' keys, timestamps and row numbers go to Spark; each view comes back as one column block
sorted by row number and is set beside the caller's frame on the driver, which therefore holds the answer (as
``to_df`` must). The feature tables are read by Spark from their ``FileSource`` paths, so on a cluster those
paths must be where every executor can read them (``s3://`` is read as ``s3a://``; a local path must be on a
shared filesystem). ``filter_by_created_timestamp`` and non-Parquet sources go to Feast's DuckDB join.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import ibis  # type: ignore[import-untyped]
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from feast.data_format import ParquetFormat
from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig, _write_data_source
from feast.infra.offline_stores.file_source import FileSource, SavedDatasetFileStorage
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.saved_dataset import SavedDatasetStorage

from streamscore.spark import input_uri, require_spark, spark_session
from streamscore.store.offline import as_datetime, join_keys, utc_timestamps

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["STORE_TYPE", "SparkOfflineStore", "SparkOfflineStoreConfig", "SparkRetrievalJob"]

STORE_TYPE: Final = "streamscore.store.offline_spark.SparkOfflineStore"
"""What ``offline_store: type:`` names to select this store (Feast imports it by this path)."""

_ROW, _TS, _KIND, _MATCH = "__row", "__ts", "__kind", "__match"  # private columns of the sorted frame
_NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"
_FEATURE_ROW, _ENTITY_ROW = 0, 1  # the sort's tie-break: a feature row at the entity's timestamp comes first


class SparkOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """Feast's DuckDB store configuration (used by every method but the join), and the Spark master."""

    type: Literal["streamscore.store.offline_spark.SparkOfflineStore"] = STORE_TYPE
    spark_master: str = "local[*]"
    """``local[N]``, ``spark://host:7077``, ``yarn``, ...; a session already active in the process is used as is."""


class SparkRetrievalJob(RetrievalJob):
    """The join, run once on first use; ``to_df``/``to_arrow``/on-demand views are Feast's, ``persist`` writes
    through Feast's DuckDB writer."""

    def __init__(
        self,
        run: Callable[[], pa.Table],
        on_demand_feature_views: list[OnDemandFeatureView],
        full_feature_names: bool,
        metadata: RetrievalMetadata,
        repo_path: str,
    ) -> None:
        super().__init__()
        self._run = run
        self._table: pa.Table | None = None
        self._on_demand_feature_views = on_demand_feature_views
        self._full_feature_names = full_feature_names
        self._metadata = metadata
        self._repo_path = repo_path

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return self._on_demand_feature_views

    @property
    def metadata(self) -> RetrievalMetadata:
        return self._metadata

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        if self._table is None:
            self._table = self._run()
        return self._table

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def persist(self, storage: SavedDatasetStorage, allow_overwrite: bool = False, timeout: int | None = None) -> None:
        if not isinstance(storage, SavedDatasetFileStorage):
            raise NotImplementedError("the Spark offline store saves datasets to files (SavedDatasetFileStorage)")
        table = ibis.memtable(self._to_arrow_internal(timeout))
        _write_data_source(table, storage.to_data_source(), self._repo_path, "overwrite", allow_overwrite)


def _spark_uri(source: FileSource, repo_path: str) -> str:
    path = FileSource.get_uri_for_file_path(repo_path, source.path)
    if path.startswith("s3://"):
        return "s3a://" + path[len("s3://") :]
    return input_uri(path if "://" in path else Path(path))


def _nanosecond_columns(source: FileSource, repo_path: str) -> set[str]:
    """Columns stored as nanosecond timestamps, which Spark reads as their int64 (``nanosAsLong``): from the
    footer, read here on the driver through Arrow's filesystems (local, s3, hdfs, gcs)."""
    path = FileSource.get_uri_for_file_path(repo_path, source.path)
    filesystem, inner = pafs.FileSystem.from_uri(path if "://" in path else str(Path(path).resolve()))
    schema = pq.read_schema(inner, filesystem=filesystem)
    return {f.name for f in schema if pa.types.is_timestamp(f.type) and f.type.unit == "ns"}


def _is_parquet(view: FeatureView) -> bool:
    source = view.batch_source
    if not isinstance(source, FileSource):
        return False
    return isinstance(source.file_format, ParquetFormat) or (
        source.file_format is None and source.path.endswith(".parquet")
    )


class _View:
    """One feature view's side of the sorted join."""

    def __init__(self, feature_view: FeatureView, feature_refs: list[str], full_feature_names: bool) -> None:
        source = feature_view.batch_source
        assert isinstance(source, FileSource)  # checked by _is_parquet
        self.source = source
        self.ttl: timedelta | None = feature_view.ttl or None  # Feast: a zero ttl is no ttl
        self.join_keys = join_keys(feature_view)  # feature-side key -> entity column
        prefix = feature_view.projection.name_to_use()  # type: ignore[no-untyped-call]
        self.features = [ref.split(":")[1] for ref in feature_refs if ref.startswith(f"{prefix}:")]
        base = feature_view.projection.name_alias or feature_view.name
        self.names = [f"{base}__{f}" if full_feature_names else f for f in self.features]

    def matches(
        self, spark: SparkSession, entity: DataFrame, bounds: tuple[Any, Any] | None, repo_path: str
    ) -> DataFrame:
        """(row number, this view's features) of every entity row: the latest feature row at or before it."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        table = spark.read.parquet(_spark_uri(self.source, repo_path))
        nanos = _nanosecond_columns(self.source, repo_path)
        renamed = {v: k for k, v in self.source.field_mapping.items()}  # feature name -> column in the file

        def column(name: str) -> Any:
            stored = renamed.get(name, name)
            if stored in nanos:
                return F.timestamp_micros(F.expr(f"div(`{stored}`, 1000)"))
            return F.col(f"`{stored}`")

        ts = column(self.source.timestamp_field).cast("timestamp")
        keys = [column(k).alias(entity_column) for k, entity_column in self.join_keys.items()]
        keep = F.lit(True)
        if bounds is not None:  # rows no entity row can take only cost time
            keep &= ts <= F.lit(bounds[1])
            if self.ttl is not None:
                keep &= F.unix_micros(ts) + _micros(self.ttl) >= F.unix_micros(F.lit(bounds[0]))
        for key in self.join_keys:
            keep &= column(key).isNotNull()
        rows = table.where(keep).select(
            *keys,
            ts.alias(_TS),
            *(
                [column(self.source.created_timestamp_column).cast("timestamp").alias("__created")]
                if self.source.created_timestamp_column
                else []
            ),
            *(column(f).alias(name) for f, name in zip(self.features, self.names, strict=True)),
        )
        entity_keys = list(self.join_keys.values())
        if self.source.created_timestamp_column:
            # One row per (keys, timestamp): the newest created, Feast's tie-break; the sort below is then total.
            newest = Window.partitionBy(*map(_col, entity_keys), _TS).orderBy(F.col("__created").desc())
            rows = rows.withColumn("__n", F.row_number().over(newest)).where(F.col("__n") == 1)
        feature_rows = rows.select(
            *map(_col, entity_keys),
            F.col(_TS),
            F.lit(_FEATURE_ROW).alias(_KIND),
            F.struct(F.col(_TS), *map(_col, self.names)).alias(_MATCH),
        )
        entity_rows = entity.select(*map(_col, entity_keys), F.col(_TS), F.lit(_ENTITY_ROW).alias(_KIND), F.col(_ROW))
        before = (
            Window.partitionBy(*map(_col, entity_keys))
            .orderBy(_TS, _KIND)
            .rowsBetween(Window.unboundedPreceding, Window.currentRow)
        )
        both = feature_rows.unionByName(entity_rows, allowMissingColumns=True)
        matched = both.withColumn(_MATCH, F.last(_MATCH, ignorenulls=True).over(before)).where(
            F.col(_KIND) == _ENTITY_ROW
        )
        fresh = F.lit(True)
        if self.ttl is not None:
            fresh = F.unix_micros(F.col(f"{_MATCH}.{_TS}")) + _micros(self.ttl) >= F.unix_micros(F.col(_TS))
        return matched.select(F.col(_ROW), *(F.when(fresh, F.col(_MATCH)[name]).alias(name) for name in self.names))


def _col(name: str) -> Any:
    """A column by its name as it is (a dot in a feature name is not a struct path)."""
    from pyspark.sql import functions as F

    return F.col(f"`{name}`")


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _microseconds(table: pa.Table) -> pa.Table:
    """Timestamp columns in microseconds, DuckDB's and Spark's unit, in which Feast's DuckDB store hands them back."""
    schema = pa.schema(
        [f.with_type(pa.timestamp("us", tz=f.type.tz)) if pa.types.is_timestamp(f.type) else f for f in table.schema]
    )
    return table.cast(schema, safe=False)


def _join(
    master: str, entity_df: pd.DataFrame, ts_column: str, stamps: pd.Series, views: list[_View], repo_path: str
) -> pa.Table:
    spark = spark_session(master)
    keys = sorted({c for v in views for c in v.join_keys.values()})
    # Spark compares instants: a timezone-naive stamp is UTC, as DuckDB's session zone makes it for the ASOF store.
    utc = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps
    shipped = pd.DataFrame({_ROW: np.arange(len(entity_df), dtype=np.int64), _TS: utc})
    for key in keys:
        shipped[key] = entity_df[key].to_numpy()
    entity = spark.createDataFrame(pa.Table.from_pandas(shipped, preserve_index=False))  # typed even when empty
    known = utc.dropna()
    bounds = (known.min().to_pydatetime(), known.max().to_pydatetime()) if len(known) else None
    answer = _microseconds(pa.Table.from_pandas(entity_df.assign(**{ts_column: stamps}), preserve_index=False))
    previous = spark.conf.get(_NANOS_AS_LONG, "false") or "false"
    # pandas writes nanosecond timestamps, which Spark otherwise refuses to read ("Illegal Parquet type"): read
    # as their int64 and converted where the footer says so (_nanosecond_columns). For this join only: the
    # session may be the backfill's too.
    spark.conf.set(_NANOS_AS_LONG, "true")
    try:
        blocks = [view.matches(spark, entity, bounds, repo_path).toArrow().sort_by(_ROW) for view in views]
    finally:
        spark.conf.set(_NANOS_AS_LONG, previous)
    for view, block in zip(views, blocks, strict=True):
        if block.num_rows != len(entity_df):
            raise RuntimeError(f"the Spark join answered {block.num_rows} of {len(entity_df)} rows")
        for name in view.names:  # a feature named like an entity column replaces it, as in the ASOF store
            if name in answer.column_names:
                answer = answer.set_column(answer.column_names.index(name), name, block[name])
            else:
                answer = answer.append_column(name, block[name])
    return answer


class SparkOfflineStore(DuckDBOfflineStore):
    """Feast's DuckDB offline store whose ``get_historical_features`` runs a sorted point-in-time join on Spark."""

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
        if filter_by_created_timestamp or not all(_is_parquet(v) for v in feature_views):
            # A second inequality, or a source Spark would need a connector for: Feast's join answers these.
            return DuckDBOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project, full_feature_names,
                filter_by_created_timestamp,
            )  # fmt: skip
        if not isinstance(entity_df, pd.DataFrame):
            raise NotImplementedError(
                "the Spark offline store takes the entity rows as a pandas DataFrame, not as SQL "
                "(Feast's DuckDB store cannot take SQL either)"
            )
        require_spark("the Spark offline store", "training.offline_store asof")
        ts_column = offline_utils.infer_event_timestamp_from_entity_df(
            dict(zip(entity_df.columns, entity_df.dtypes, strict=True))
        )
        stamps = utc_timestamps(entity_df, ts_column)
        entity = entity_df.copy()  # the join runs on first use: what the caller does to its frame meanwhile is not ours
        views = [_View(fv, feature_refs, full_feature_names) for fv in feature_views]
        repo = str(config.repo_path)
        master: str = getattr(config.offline_store, "spark_master", "local[*]")
        first, last = stamps.min(), stamps.max()
        return SparkRetrievalJob(
            lambda: _join(master, entity, ts_column, stamps, views, repo),
            OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry),
            full_feature_names,
            RetrievalMetadata(
                features=feature_refs,
                keys=[c for c in entity_df.columns if c != ts_column],
                min_event_timestamp=as_datetime(first),
                max_event_timestamp=as_datetime(last),
            ),
            repo,
        )
