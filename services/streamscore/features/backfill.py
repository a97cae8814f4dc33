"""`streamscore backfill`: the same plan and kernels over history, for training tables and the online store.

History is a Parquet file of raw events in arrival order (the order they reached Kafka). The backfill
drops exactly what the stream drops, decided the same way: invalid rows, repeated event ids, and events
late against their user's watermark in *arrival* order. It then runs each view's kernel in event-time order
per entity (DuckDB sorts, spilling to disk past its memory limit, so memory stays bounded) and writes one
row per (entity, event time) with the window values right after that instant: the offline feature table
Feast's ``get_historical_features`` joins point-in-time. :mod:`streamscore.features.backfill_spark` runs the same
rules and the same :class:`SortedRun` step on Spark.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streamscore.features.plan import ViewPlan
from streamscore.features.rules import EventRules
from streamscore.features.state import ViewState

__all__ = [
    "OFFLINE_COMPRESSION",
    "BackfillReport",
    "SortedRun",
    "SortedStep",
    "ViewOutput",
    "backfill",
    "offline_batch",
    "offline_schema",
]

Progress = Callable[[str, int, int], None]  # (view, rows done, rows total)
OnlineSink = Callable[[ViewPlan, list[str], np.ndarray, np.ndarray], None]  # plan, ids, values, event ms

# The offline tables' codec. Snappy, Parquet's default, which every reader takes: Spark's reader (airlift) failed
# on pyarrow's LZ4 pages of a backfilled table ("MalformedInputException: all input must be consumed").
OFFLINE_COMPRESSION = "snappy"


@dataclass
class ViewOutput:
    view: str
    path: Path
    rows: int = 0
    entities: int = 0


@dataclass
class BackfillReport:
    events_read: int = 0
    accepted: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    views: list[ViewOutput] = field(default_factory=list)


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _accepted_sql(path: Path, rules: EventRules, lo_ms: int, hi_ms: int, columns: list[str]) -> str:
    """Rows the stream would accept, with their arrival order (row number in the file).

    The stream rejects events further ahead of its wall clock than ``max_future``; history has no arrival
    clock, so the end of the range stands in for it. Such events must not move a watermark either.
    """
    src = str(path).replace("'", "''")
    return f"""
        WITH src AS (
            SELECT {", ".join(f'"{c}"' for c in columns)}, epoch_ms(event_time) AS time_ms,
                   file_row_number AS arrival
            FROM read_parquet('{src}', file_row_number = true)
        ),
        valid AS (
            SELECT * FROM src
            WHERE {rules.sql_valid()} AND event_time IS NOT NULL
              AND time_ms <= {hi_ms + rules.max_future_ms}
        ),
        firsts AS (
            SELECT * FROM valid QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY arrival) = 1
        ),
        gated AS (
            SELECT *, max(time_ms) OVER (
                PARTITION BY user_id ORDER BY arrival ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
            ) AS watermark_ms
            FROM firsts
        )
        SELECT * EXCLUDE (watermark_ms) FROM gated
        WHERE (watermark_ms IS NULL OR time_ms >= watermark_ms - {rules.allowed_lag_ms})
          AND time_ms BETWEEN {lo_ms} AND {hi_ms}
    """


def offline_schema(plan: ViewPlan) -> pa.Schema:
    """The offline table's Arrow schema: entity key, ``event_timestamp`` (ms, UTC), the features in plan order."""
    fields = [pa.field(plan.entity_key, pa.string()), pa.field("event_timestamp", pa.timestamp("ms", tz="UTC"))]
    fields += [pa.field(f.name, pa.int64() if f.is_integer else pa.float64()) for f in plan.features]
    return pa.schema(fields)


def _batches(con: duckdb.DuckDBPyConnection, sql: str, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    reader = con.sql(sql).to_arrow_reader(chunk_rows)
    assert reader is not None
    yield from reader


@dataclass(frozen=True)
class SortedStep:
    """Rows out of :class:`SortedRun`: each row's entity, time and features right after it."""

    entity: pa.Array
    times: np.ndarray
    feats: np.ndarray
    keep: np.ndarray  # rows of the offline table: the last of its (entity, instant), from ``start`` on
    last: np.ndarray  # the last row of its entity: its values as of its newest event (``--materialize``)


class SortedRun:
    """One view's kernels over rows sorted by (entity, time_ms, arrival), fed batch by batch: the step both
    engines run, the DuckDB engine over one sorted query, the Spark engine over each sorted partition.

    A batch has the columns ``entity``, ``time_ms``, the plan's numeric columns and, for a distinct count,
    ``distinct_value`` (any non-negative 64-bit hash of the value). Batches can be cut anywhere: an entity
    going on into the next batch keeps its state row (moved to row 0), and each batch's final row comes out
    with the next step (or :meth:`finish`), once it is known whether the next row is the same entity at the
    same instant. (Decided within the batch alone, such a pair split by a cut gave two rows for one instant,
    and an entity ending at a cut was not counted.)
    """

    def __init__(self, plan: ViewPlan, start_ms: int) -> None:
        self.plan = plan
        self.start_ms = start_ms
        self.state = ViewState(plan)
        self.carry: pa.Scalar | None = None  # the entity in row 0, continued from the previous batch
        self._held: SortedStep | None = None  # the previous batch's final row, keep and last not yet known

    def step(self, batch: pa.RecordBatch) -> SortedStep:
        """Apply a non-empty batch; the rows decided so far: the previous batch's final row, and this batch's
        rows but its final one."""
        plan, state = self.plan, self.state
        n = batch.num_rows
        entity = batch.column("entity")
        times = batch.column("time_ms").to_numpy().astype(np.int64)
        values = np.empty((n, len(plan.numeric_columns)), np.float64)
        for c, name in enumerate(plan.numeric_columns):
            values[:, c] = batch.column(name).to_numpy()
        dvals = batch.column("distinct_value").to_numpy().astype(np.int64) if plan.distinct_column else None

        # Entities are sorted: each run of one entity gets its own row; row 0 continues the last batch's.
        same = np.zeros(n, np.bool_)
        same[1:] = pc.equal(entity[1:], entity[:-1]).to_numpy(zero_copy_only=False)
        same[0] = self.carry is not None and entity[0] == self.carry
        rows = np.cumsum(~same).astype(np.int64)
        state.ensure_rows(int(rows[-1]) + 1)
        feats, _ = state.apply_and_read(rows, times, values, dvals)

        # One row per (entity, instant): the values after the last event at that instant.
        next_same = np.zeros(n, np.bool_)
        next_same[:-1] = same[1:] & (times[1:] == times[:-1])
        keep = ~next_same & (times >= self.start_ms)
        last = np.ones(n, np.bool_)
        last[:-1] = ~same[1:]
        self.carry = entity[n - 1]
        state.move_row(int(rows[-1]), 0)

        out = SortedStep(entity.slice(0, n - 1), times[:-1], feats[:-1], keep[:-1], last[:-1])
        held, self._held = self._held, SortedStep(entity.slice(n - 1), times[-1:], feats[-1:], keep[-1:], last[-1:])
        if held is None:
            return out
        held.keep[0] &= not (same[0] and times[0] == held.times[0])
        held.last[0] = not same[0]
        return SortedStep(
            pa.concat_arrays([held.entity, out.entity]),
            np.concatenate([held.times, out.times]),
            np.concatenate([held.feats, out.feats]),
            np.concatenate([held.keep, out.keep]),
            np.concatenate([held.last, out.last]),
        )

    def finish(self) -> SortedStep | None:
        """The last batch's final row (the last of its entity), or None without any batch."""
        held, self._held = self._held, None
        return held


def _run_view(
    con: duckdb.DuckDBPyConnection,
    plan: ViewPlan,
    accepted: str,
    out_dir: Path,
    start_ms: int,
    chunk_rows: int,
    total: int,
    progress: Progress | None,
    online: OnlineSink | None,
) -> ViewOutput:
    cols = "".join(f', "{c}"' for c in plan.numeric_columns)
    # 63-bit hashes stand in for distinct values: one user would need two merchants colliding in 2^63 to
    # miscount, and no Python dictionary is built per row.
    distinct = f', (hash("{plan.distinct_column}") >> 1)::BIGINT AS distinct_value' if plan.distinct_column else ""
    sql = (
        f'SELECT "{plan.entity_key}" AS entity, time_ms{cols}{distinct} FROM {accepted} '
        "ORDER BY entity, time_ms, arrival"
    )
    out = ViewOutput(plan.name, out_dir / f"{plan.name}.parquet")
    schema = offline_schema(plan)
    run = SortedRun(plan, start_ms)
    done = 0
    tmp = out.path.with_suffix(".parquet.partial")
    with pq.ParquetWriter(tmp, schema, compression=OFFLINE_COMPRESSION) as writer:

        def emit(step: SortedStep) -> None:
            if not len(step.times):  # a first batch of one row: that row waits for the next
                return
            writer.write_batch(offline_batch(schema, plan, step.entity, step.times, step.feats, step.keep))
            out.rows += int(step.keep.sum())
            out.entities += int(step.last.sum())
            if online is not None:
                ids = pc.filter(step.entity, pa.array(step.last)).to_pylist()
                online(plan, ids, step.feats[step.last], step.times[step.last])

        for batch in _batches(con, sql, chunk_rows):
            n = batch.num_rows
            if n == 0:
                continue
            emit(run.step(batch))
            done += n
            if progress is not None:
                progress(plan.name, done, total)
        final = run.finish()
        if final is not None:
            emit(final)
    tmp.replace(out.path)
    return out


def offline_batch(
    schema: pa.Schema, plan: ViewPlan, entity: pa.Array, times: np.ndarray, feats: np.ndarray, keep: np.ndarray
) -> pa.RecordBatch:
    """The offline table's rows where ``keep`` is true (NaN features become nulls)."""
    arrays: list[pa.Array] = [
        pc.filter(entity, pa.array(keep)),
        pa.array(times[keep], pa.timestamp("ms", tz="UTC")),
    ]
    for f_index, spec in enumerate(plan.features):
        col = feats[keep, f_index]
        if spec.is_integer:
            arrays.append(pa.array(col.astype(np.int64), pa.int64()))
        else:
            arrays.append(pa.array(col, pa.float64(), from_pandas=True))  # NaN -> null
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def backfill(
    events: Path,
    plans: list[ViewPlan],
    out_dir: Path,
    *,
    start: datetime,
    end: datetime,
    rules: EventRules,
    chunk_rows: int = 200_000,
    memory_limit: str = "1GB",
    progress: Progress | None = None,
    online: OnlineSink | None = None,
) -> BackfillReport:
    """Compute every view over ``events`` for ``[start, end]`` and write ``out_dir/<view>.parquet``.

    Windows at ``start`` need the events before it: history from ``start`` minus the longest window is
    read and applied, but only rows from ``start`` on are written. ``online`` receives each entity's
    values as of its last event up to ``end`` (``--materialize``).
    """
    if not events.exists():
        raise FileNotFoundError(f"no events file at {events}")
    if end <= start:
        raise ValueError(f"--end ({end.isoformat()}) must be after --start ({start.isoformat()})")
    out_dir.mkdir(parents=True, exist_ok=True)
    start_ms, end_ms = _ms(start), _ms(end)
    lookback = max(p.horizon_ms for p in plans)
    # An on-disk scratch database: tables larger than memory_limit spill to it, and every view's thread
    # (a cursor = its own connection) sees the accepted events.
    scratch = out_dir / ".backfill.duckdb"
    scratch.unlink(missing_ok=True)
    con = duckdb.connect(str(scratch))
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET preserve_insertion_order = false")
    report = BackfillReport()
    src = str(events).replace("'", "''")
    report.events_read = int(
        con.execute(
            f"SELECT count(*) FROM read_parquet('{src}') "
            f"WHERE epoch_ms(event_time) BETWEEN {start_ms - lookback} AND {end_ms}"
        ).fetchall()[0][0]
    )
    # Only the columns the rules and the views read travel into the scratch table.
    needed = {"event_id", "user_id", "merchant_id", "amount", "event_time"}
    for p in plans:
        needed |= {p.entity_key, *p.numeric_columns, *([p.distinct_column] if p.distinct_column else [])}
    accepted_sql = _accepted_sql(events, rules, start_ms - lookback, end_ms, sorted(needed))
    con.execute(f"CREATE TABLE accepted AS {accepted_sql}")
    report.accepted = int(con.execute("SELECT count(*) FROM accepted").fetchall()[0][0])
    report.dropped = {"invalid, duplicate or late": report.events_read - report.accepted}
    # Views are independent: one thread each (DuckDB, Arrow and the numba kernels all release the GIL).
    # The online sink and the progress callback are called under one lock.
    lock = threading.Lock()

    def locked(fn: Callable[..., None] | None) -> Callable[..., None] | None:
        if fn is None:
            return None

        def call(*args: Any) -> None:
            with lock:
                fn(*args)

        return call

    with ThreadPoolExecutor(max_workers=min(len(plans), os.cpu_count() or 1)) as pool:
        args = ("accepted", out_dir, start_ms, chunk_rows, report.accepted, locked(progress), locked(online))
        futures = [pool.submit(_run_view, con.cursor(), plan, *args) for plan in plans]
        report.views = [f.result() for f in futures]
    con.close()
    scratch.unlink(missing_ok=True)
    scratch.with_suffix(".duckdb.wal").unlink(missing_ok=True)
    return report


def read_offline(path: Path) -> Any:
    """The offline table as pandas (tests and debugging)."""
    return pq.read_table(path).to_pandas()
