"""`streamscore features backfill --engine spark`: the backfill on PySpark, for history beyond one machine.

The same input (one Parquet file of raw events in arrival order), rules, kernels and output as
:func:`streamscore.features.backfill.backfill`; only who sorts and who runs the kernels changes:

1. **Acceptance** is Spark SQL written line for line after the DuckDB engine's ``_accepted_sql``, with the
   id and amount checks from :meth:`EventRules.sql_valid` (its Spark dialect): valid rows, the first copy of
   each ``event_id`` in arrival order (the row's index in the file, ``_metadata.row_index``), lateness against
   the user's watermark in arrival order, ``max_future`` against the end of the range, and
   ``[start - lookback, end]``. The accepted events are cached for both views.
2. **Kernels**: per view, rows are hash-partitioned by entity and each partition sorted by
   (entity, time_ms, arrival); ``mapInArrow`` feeds each sorted partition's Arrow batches to
   :class:`SortedRun`, the exact step the DuckDB engine runs over its one sorted query (a fresh
   ``ViewState`` per partition, an entity carried from batch to batch). Not ``groupBy().applyInPandas``:
   that builds a pandas frame, a Python call and a ``ViewState`` per entity (a million users, a million of
   each), where a sorted partition streams batches of many entities through the same step.
3. **Writing**: executors write each view's rows, plus each entity's last row for ``--materialize``, as
   Parquet parts into a staging folder beside the table (Spark's commit protocol: a retried task never
   leaves a second copy). The driver then streams the parts' row groups into ``<view>.parquet`` with
   :func:`offline_schema` (written aside, then renamed), the file the DuckDB engine writes. Why not Spark's
   folder of parts as the table: ``feature_repo/definitions.py`` names one ``<view>.parquet`` per view,
   Feast's file source and our ASOF store (``store/offline.py``, through Feast's reader) read that path,
   and Spark maps types its own way (INT96 timestamps by default). Why not ``coalesce(1)``: it would pull
   the kernels of the whole view into one task. The merge is one sequential pass on the driver (see
   BENCHMARKS.md for its share of the time); collecting the rows instead would hold them all in memory.

``--materialize``: each entity's last row (the values as of its last event up to ``end``) goes to the online
sink while the driver merges, the same values the DuckDB engine writes.

PySpark is imported lazily (the session comes from :mod:`streamscore.spark`): the package works without the
``spark`` extra, and asking for this engine without it (or without Java) fails with one line saying what to install.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamscore.errors import StreamscoreError
from streamscore.features.backfill import (
    OFFLINE_COMPRESSION,
    BackfillReport,
    OnlineSink,
    Progress,
    SortedRun,
    SortedStep,
    ViewOutput,
    offline_batch,
    offline_schema,
)
from streamscore.features.plan import ViewPlan
from streamscore.features.rules import EventRules
from streamscore.spark import hadoop_path, input_uri, require_spark, spark_session

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["backfill_spark"]

Fn = TypeVar("Fn", bound=Callable[..., None])

KEEP, LAST = "_keep", "_last"  # staging columns: a row of the offline table / an entity's last row


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)  # as the DuckDB engine rounds


def _accepted(
    spark: SparkSession, source: DataFrame, rules: EventRules, lo_ms: int, hi_ms: int, columns: list[str]
) -> DataFrame:
    """The DuckDB engine's ``_accepted_sql``, in Spark SQL (no QUALIFY, no EXCLUDE): read it side by side.
    Cached (memory, then disk): both views' jobs read it."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    view = f"streamscore_events_{uuid.uuid4().hex}"
    source.select(*columns, F.col("_metadata.row_index").alias("arrival")).createOrReplaceTempView(view)
    cols = ", ".join(f"`{c}`" for c in columns)
    try:
        accepted = spark.sql(f"""
            WITH src AS (
                SELECT {cols}, unix_millis(event_time) AS time_ms, arrival FROM {view}
            ),
            valid AS (
                SELECT * FROM src
                WHERE {rules.sql_valid("spark")} AND event_time IS NOT NULL
                  AND time_ms <= {hi_ms + rules.max_future_ms}
            ),
            firsts AS (
                SELECT * FROM (
                    SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY arrival) AS copy FROM valid
                ) WHERE copy = 1
            ),
            gated AS (
                SELECT *, max(time_ms) OVER (
                    PARTITION BY user_id ORDER BY arrival ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
                ) AS watermark_ms
                FROM firsts
            )
            SELECT {cols}, time_ms, arrival FROM gated
            WHERE (watermark_ms IS NULL OR time_ms >= watermark_ms - {rules.allowed_lag_ms})
              AND time_ms BETWEEN {lo_ms} AND {hi_ms}
        """)
    finally:
        # The query is analyzed: the view can go. (Dropped after persist() it would uncache the result too.)
        spark.catalog.dropTempView(view)
    return accepted.persist(StorageLevel.MEMORY_AND_DISK)


def _staging_schema(plan: ViewPlan) -> pa.Schema:
    """What the executors write: the offline table with ``time_ms`` as plain int64 (Spark's timestamps are
    microseconds in the session's zone; the driver makes it the table's ms UTC type) and the two flags."""
    table = list(offline_schema(plan))
    flags = [pa.field(KEEP, pa.bool_()), pa.field(LAST, pa.bool_())]
    return pa.schema([table[0], pa.field("time_ms", pa.int64()), *table[2:], *flags])


def _spark_ddl(schema: pa.Schema) -> str:
    names = {pa.string(): "string", pa.int64(): "bigint", pa.float64(): "double", pa.bool_(): "boolean"}
    return ", ".join(f"`{f.name}` {names[f.type]}" for f in schema)


def _staged(plan: ViewPlan, step: SortedStep) -> pa.RecordBatch:
    """The offline rows of one step plus each entity's last row, flagged."""
    mask = step.keep | step.last
    entity = step.entity if step.entity.type == pa.string() else step.entity.cast(pa.string())
    rows = offline_batch(offline_schema(plan), plan, entity, step.times, step.feats, mask)
    arrays = [rows.column(0), pa.array(step.times[mask], pa.int64()), *rows.columns[2:]]
    return pa.RecordBatch.from_arrays(
        [*arrays, pa.array(step.keep[mask]), pa.array(step.last[mask])], schema=_staging_schema(plan)
    )


def _kernel_step(plan: ViewPlan, start_ms: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function ``mapInArrow`` runs on each sorted partition (pickled to the executors)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        sorted_run = SortedRun(plan, start_ms)
        for batch in batches:
            if batch.num_rows:
                yield _staged(plan, sorted_run.step(batch))
        final = sorted_run.finish()
        if final is not None:
            yield _staged(plan, final)

    return run


def _compute_view(accepted: DataFrame, plan: ViewPlan, start_ms: int, staging: Path) -> None:
    from pyspark.sql import functions as F

    columns = [F.col(plan.entity_key).alias("entity"), F.col("time_ms"), *map(F.col, plan.numeric_columns)]
    if plan.distinct_column:
        # Any stable non-negative 63-bit hash will do: the kernels only compare distinct values.
        columns.append(F.shiftrightunsigned(F.xxhash64(plan.distinct_column), 1).alias("distinct_value"))
    rows = (
        accepted.select(*columns, F.col("arrival"))
        .repartition(F.col("entity"))
        .sortWithinPartitions("entity", "time_ms", "arrival")
        .mapInArrow(_kernel_step(plan, start_ms), _spark_ddl(_staging_schema(plan)))
    )
    rows.write.mode("overwrite").parquet(hadoop_path(staging))


def _merge(plan: ViewPlan, staging: Path, out: ViewOutput, chunk_rows: int, online: OnlineSink | None) -> None:
    """The staged parts into ``out.path`` (one file, the offline schema), the last rows to ``online``."""
    if not (staging / "_SUCCESS").exists():
        raise StreamscoreError(
            f"Spark's output is not in {staging}: the executors must write {out.path.parent} at the same path"
            " as this process (a shared filesystem)"
        )
    schema = offline_schema(plan)
    stamp = pa.timestamp("ms", tz="UTC")
    tmp = out.path.with_suffix(".parquet.partial")
    with pq.ParquetWriter(tmp, schema, compression=OFFLINE_COMPRESSION) as writer:
        for part in sorted(staging.glob("*.parquet")):
            for batch in pq.ParquetFile(part).iter_batches(batch_size=chunk_rows):
                kept = batch.filter(batch.column(KEEP))
                arrays = [kept.column(0), kept.column(1).cast(stamp), *kept.columns[2 : 2 + len(plan.features)]]
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                out.rows += kept.num_rows
                lasts = batch.filter(batch.column(LAST))
                out.entities += lasts.num_rows
                if online is not None and lasts.num_rows:
                    values = np.column_stack(
                        [lasts.column(2 + j).to_numpy(zero_copy_only=False) for j in range(len(plan.features))]
                    ).astype(np.float64)  # nulls are NaN, as the DuckDB engine hands them over
                    times = lasts.column(1).to_numpy().astype(np.int64)
                    online(plan, lasts.column(0).to_pylist(), values, times)
    tmp.replace(out.path)


def backfill_spark(
    events: Path | str,
    plans: list[ViewPlan],
    out_dir: Path,
    *,
    start: datetime,
    end: datetime,
    rules: EventRules,
    master: str = "local[*]",
    spark: SparkSession | None = None,
    chunk_rows: int = 200_000,
    progress: Progress | None = None,
    online: OnlineSink | None = None,
) -> BackfillReport:
    """:func:`streamscore.features.backfill.backfill` on Spark: the same tables in ``out_dir/<view>.parquet``.

    ``events`` is one Parquet file: a local path, or a URI every executor can read (``s3a://``, ``hdfs://``).
    ``spark`` is a session to use (kept open); without one, the active session or a new one on ``master``,
    stopped at the end if this call started it. ``out_dir`` must be a folder the executors and this process
    share (it holds the staging parts). ``progress`` is called as each view starts and ends.
    """
    if end <= start:
        raise ValueError(f"--end ({end.isoformat()}) must be after --start ({start.isoformat()})")
    uri = input_uri(events)
    require_spark()
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    own = spark is None and SparkSession.getActiveSession() is None
    session = spark if spark is not None else spark_session(master)
    out_dir.mkdir(parents=True, exist_ok=True)
    start_ms, end_ms = _ms(start), _ms(end)
    lookback = max(p.horizon_ms for p in plans)
    accepted: DataFrame | None = None
    try:
        source = session.read.parquet(uri)
        if len(source.inputFiles()) != 1:
            raise StreamscoreError(f"{events} is not one Parquet file: arrival order is the row order of one file")
        report = BackfillReport()
        in_range = F.unix_millis(F.col("event_time")).between(start_ms - lookback, end_ms)
        report.events_read = source.where(in_range).count()
        needed = {"event_id", "user_id", "merchant_id", "amount", "event_time"}
        for p in plans:
            needed |= {p.entity_key, *p.numeric_columns, *([p.distinct_column] if p.distinct_column else [])}
        accepted = _accepted(session, source, rules, start_ms - lookback, end_ms, sorted(needed))
        report.accepted = accepted.count()
        report.dropped = {"invalid, duplicate or late": report.events_read - report.accepted}

        def run_view(plan: ViewPlan) -> ViewOutput:
            assert accepted is not None
            out = ViewOutput(plan.name, out_dir / f"{plan.name}.parquet")
            staging = out_dir / f".{plan.name}.spark"
            if progress is not None:
                progress(plan.name, 0, report.accepted)
            try:
                _compute_view(accepted, plan, start_ms, staging)
                _merge(plan, staging, out, chunk_rows, online)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            if progress is not None:
                progress(plan.name, report.accepted, report.accepted)
            return out

        # One thread per view: Spark runs both views' jobs at once on the free cores, and one view's merge
        # on the driver overlaps the other's job. The callbacks are called under one lock, as the DuckDB
        # engine does.
        lock = threading.Lock()
        progress, online = _locked(lock, progress), _locked(lock, online)
        with ThreadPoolExecutor(max_workers=len(plans)) as pool:
            report.views = list(pool.map(run_view, plans))
        return report
    finally:
        if accepted is not None:
            accepted.unpersist()
        if own:
            session.stop()


def _locked(lock: threading.Lock, fn: Fn | None) -> Fn | None:
    if fn is None:
        return None

    def call(*args: Any) -> None:
        with lock:
            fn(*args)

    return cast(Fn, call)
