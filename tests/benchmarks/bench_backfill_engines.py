"""The backfill's two engines on one file: DuckDB (``backfill``) against Spark local mode (``backfill_spark``).

N events (default 10M; ``python -m tests.benchmarks backfill_engines:2m`` for fewer: ``500k``, ``2m``, ``10m``
or a plain number) are generated over 7 days with the project's generator (a user per 100 events, a merchant per
1,000 users) into one Parquet file. Then, on that file, timed file to file with the project's two views:

* the DuckDB engine, in this process, using every core;
* Spark ``local[1]`` and ``local[N]`` (every core): a session each, started and warmed up on a small file
  before the clock starts (session start is reported apart). ``local[1]`` against ``local[N]`` is the growth with
  cores this machine can show; the driver's single-threaded merge of the staged parts into ``<view>.parquet``
  is timed apart, as it does not grow with executors.

Every engine's report (events read, accepted, rows and entities per view) must be the same and the feature
columns' sums equal (rel. 1e-9), or the run fails. Spark gets ``--driver-memory`` ``SPARK_DRIVER_MEMORY``
(local mode runs the executors in the driver's JVM). No Kafka or Redis.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tests.benchmarks.features_common import say

DEFAULT_EVENTS = 10_000_000
SPAN = timedelta(days=7)
SPARK_DRIVER_MEMORY = "4g"
WARMUP_EVENTS = 20_000


@dataclass
class Run:
    engine: str
    seconds: float
    start_s: float = 0.0  # Spark session start and warm-up, not in ``seconds``
    merge_s: float = 0.0  # of which the driver's merge of staged parts
    report: Any = None


@dataclass
class Result:
    events: int
    users: int
    file_mb: float
    runs: list[Run] = field(default_factory=list)


def parse_events(parts: list[str] | None) -> int:
    if not parts:
        return DEFAULT_EVENTS
    text = parts[0].lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    try:
        return int(float(text.rstrip("km")) * scale)
    except ValueError:
        raise SystemExit(f"backfill_engines takes a number of events (10m, 2m, 500k), got {parts[0]!r}") from None


def _signature(out_dir: Path, report: Any) -> tuple[Any, ...]:
    """What every engine must agree on: the report, and each table's feature sums (any row order)."""
    sums = []
    for view in report.views:
        table = pq.read_table(out_dir / f"{view.view}.parquet")
        sums.append(tuple(pc.sum(table.column(i)).as_py() or 0 for i in range(2, table.num_columns)))
    views = tuple((v.view, v.rows, v.entities) for v in report.views)
    return (report.events_read, report.accepted, views), sums


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return a[0] == b[0] and all(
        np.allclose(x, y, rtol=1e-9, atol=0, equal_nan=True) for x, y in zip(a[1], b[1], strict=True)
    )


def bench(events: int) -> Result:
    from streamscore.features import backfill, load_plans, rules_for
    from streamscore.features import backfill_spark as spark_engine
    from streamscore.generator import GeneratorConfig, write_parquet
    from streamscore.settings import Settings
    from streamscore.spark import spark_session
    from streamscore.store import apply_definitions

    os.environ.setdefault("PYSPARK_SUBMIT_ARGS", f"--driver-memory {SPARK_DRIVER_MEMORY} pyspark-shell")
    with tempfile.TemporaryDirectory(prefix="streamscore-bench-engines-") as tmp:
        root = Path(tmp)
        settings = Settings(data_dir=root, metrics_port=0)
        apply_definitions(settings)
        plans = load_plans(settings)
        rules = rules_for(settings, plans)
        users = max(1_000, events // 100)
        config = GeneratorConfig(
            events=events, users=users, merchants=max(200, users // 1_000), seed=1,
            rate=events / SPAN.total_seconds(),
        )  # fmt: skip
        path = root / "events.parquet"
        say(f"backfill engines: writing {events:,} events ({users:,} users) to Parquet")
        write_parquet(config, path)
        warm = root / "warm.parquet"
        write_parquet(GeneratorConfig(events=WARMUP_EVENTS, users=200, seed=4, start=config.start, rate=1.0), warm)
        start, end = config.start, config.start + SPAN + timedelta(days=1)
        result = Result(events, users, path.stat().st_size / 1e6)
        kw = {"start": start, "end": end, "rules": rules}

        say("backfill engines: duckdb (warm-up, then timed)")
        backfill(warm, plans, root / "warm-duckdb", **kw)  # numba cache load, DuckDB init
        started = time.perf_counter()
        report = backfill(path, plans, root / "duckdb", **kw)
        result.runs.append(Run("DuckDB", time.perf_counter() - started, report=report))
        want = _signature(root / "duckdb", report)

        merge = spark_engine._merge
        for cores in (1, os.cpu_count() or 1):
            master = f"local[{cores}]"
            say(f"backfill engines: spark {master} (session start and warm-up, then timed)")
            merged: list[float] = []

            def timed_merge(*args: Any, _merged: list[float] = merged) -> None:
                t = time.perf_counter()
                merge(*args)
                _merged.append(time.perf_counter() - t)

            started = time.perf_counter()
            session = spark_session(master)
            spark_engine.backfill_spark(warm, plans, root / "warm-spark", spark=session, **kw)
            start_s = time.perf_counter() - started
            spark_engine._merge = timed_merge  # type: ignore[assignment]
            try:
                started = time.perf_counter()
                report = spark_engine.backfill_spark(path, plans, root / f"spark-{cores}", spark=session, **kw)
                seconds = time.perf_counter() - started
            finally:
                spark_engine._merge = merge  # type: ignore[assignment]
                session.stop()
            result.runs.append(Run(f"Spark {master}", seconds, start_s, sum(merged), report))
            got = _signature(root / f"spark-{cores}", report)
            if not _same(got, want):
                raise AssertionError(f"spark {master} differs from duckdb: {got} {want}")
        return result


def markdown(r: Result) -> str:
    duck = r.runs[0]
    lines = [
        f"### Backfill engines: DuckDB vs Spark local ({r.events:,} events, {r.users:,} users, 7 days, "
        f"{r.file_mb:,.0f} MB of Parquet)\n",
        "| engine | seconds | events/s | vs DuckDB | driver merge (s) | session start + warm-up (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for run in r.runs:
        spark_only = "- | -" if run is duck else f"{run.merge_s:.1f} | {run.start_s:.1f}"
        lines.append(
            f"| {run.engine} | {run.seconds:.1f} | {r.events / run.seconds:,.0f} | "
            f"{duck.seconds / run.seconds:.2f}x | {spark_only} |"
        )
    spark = [run for run in r.runs if run is not duck]
    growth = spark[0].seconds / spark[-1].seconds if len(spark) > 1 else float("nan")
    lines.append(
        f"\nSame file, same process, in this order; every engine's report and feature sums agree. "
        f"{os.cpu_count()} cores: DuckDB uses them all; Spark {spark[-1].engine.split()[-1]} runs "
        f"{growth:.2f}x faster than local[1]. Spark's driver had {SPARK_DRIVER_MEMORY}.\n"
    )
    return "\n".join(lines)


def run(parts: list[str] | None = None) -> str:
    return markdown(bench(parse_events(parts)))


if __name__ == "__main__":
    import sys

    print(run(sys.argv[1:] or None))
