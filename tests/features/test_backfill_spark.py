"""The Spark backfill writes the DuckDB backfill's tables, row for row and type for type, from the same events.

The events come from the project's generator (out of order and late by its own config) with duplicates, invalid
rows, same-instant events, far-future events and history before the lookback added. Spark runs in local mode
(``local[2]``, one session for the module); nothing here needs Kafka or Redis. CI installs the ``spark`` extra, so
a missing PySpark fails here instead of skipping; a missing Java skips, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from streamscore.bounds import InputBounds
from streamscore.cli import app, main
from streamscore.features import EventRules, ViewPlan, backfill, load_plans, rules_for
from streamscore.features.backfill_spark import backfill_spark
from streamscore.features.rules import ID_FIELDS
from streamscore.generator import ARROW_SCHEMA, GeneratorConfig, generate_frame, last_event_time
from streamscore.settings import Settings
from streamscore.spark import spark_session
from streamscore.store import apply_definitions

CONFIG = GeneratorConfig(
    events=6_000, users=60, merchants=25, rate=2.0, seed=11, out_of_order_rate=0.08, late_rate=0.03
)
NULLABLE = pa.schema([f.with_nullable(True) for f in ARROW_SCHEMA])


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs Java 17 or 21, and none is installed (no java on PATH, no JAVA_HOME)")
    session = spark_session("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[ViewPlan], EventRules]:
    """A data directory with the project's definitions applied, and their plans and rules."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("repo"), metrics_port=0)
    apply_definitions(settings)
    plans = load_plans(settings)
    return settings, plans, rules_for(settings, plans)


def _parity_events(rules: EventRules) -> tuple[pd.DataFrame, datetime, datetime]:
    """Generated events in arrival order, plus every kind of event the rules drop, and the range to backfill."""
    rng = np.random.default_rng(5)
    frame = generate_frame(CONFIG)
    start = CONFIG.start + timedelta(minutes=15)
    end = frame["event_time"].max().to_pydatetime() - timedelta(minutes=5)
    rows = frame.to_dict("records")

    def like(i: int, **changes: Any) -> dict[str, Any]:
        row = dict(rows[i], event_id=f"extra-{len(extra)}")
        row.update(changes)
        return row

    extra: list[tuple[int, dict[str, Any]]] = []  # (arrival position, row)
    for i in rng.choice(len(rows), 120, replace=False):  # repeated ids, later in arrival order, other amounts
        extra.append((int(i) + int(rng.integers(1, 400)), dict(rows[i], amount=rows[i]["amount"] + 1.0)))
    for i in rng.choice(len(rows), 40, replace=False):  # another event at the same instant
        extra.append((int(i) + 1, like(int(i))))
    bad: list[dict[str, Any]] = [
        {"amount": float("nan")}, {"amount": float("inf")}, {"amount": -0.01}, {"amount": 2e7}, {"amount": None},
        {"user_id": ""}, {"user_id": "u" * 129}, {"user_id": "bad\nid"}, {"user_id": "bad\x7f"},
        {"merchant_id": "m\x85"}, {"merchant_id": None}, {"event_id": None}, {"event_time": None},
        {"user_id": "\U0001f600" * 129},
    ]  # fmt: skip
    good = [{"user_id": "\U0001f600" * 128}, {"user_id": "line\u2028sep"}, {"merchant_id": "m" * 128}]
    for n, changes in enumerate(bad * 3 + good):
        extra.append((int(rng.integers(0, len(rows))), like(n % len(rows), **changes)))
    first = frame["event_time"].iloc[0].to_pydatetime()
    for i in rng.choice(len(rows), 10, replace=False):  # far in the future: invalid; just past the end: kept
        ahead = timedelta(milliseconds=rules.max_future_ms) + timedelta(minutes=20)
        extra.append((int(i), like(int(i), event_time=end + ahead)))
        extra.append((int(i), like(int(i), event_time=end + timedelta(minutes=1))))
        extra.append((int(i), like(int(i), event_time=first - timedelta(days=3))))  # before the lookback
    duplicate_of_invalid = like(0, amount=-5.0)
    extra.append((1, duplicate_of_invalid))
    extra.append((2, dict(duplicate_of_invalid, amount=5.0)))  # its valid second copy counts
    order = sorted(range(len(extra)), key=lambda k: extra[k][0])
    merged: list[dict[str, Any]] = []
    at = 0
    for position, row in (extra[k] for k in order):
        merged += rows[at : min(position, len(rows))]
        at = max(at, min(position, len(rows)))
        merged.append(row)
    merged += rows[at:]
    return pd.DataFrame(merged), start, end


def _write(frame: pd.DataFrame, path: Path) -> Path:
    pq.write_table(pa.Table.from_pandas(frame, schema=NULLABLE, preserve_index=False), path)
    return path


class _LastValues:
    """An online sink that keeps each entity's latest write: (event ms, values)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], tuple[int, list[float]]] = {}

    def __call__(self, plan: ViewPlan, ids: list[str], values: np.ndarray, event_ms: np.ndarray) -> None:
        for entity, row, t in zip(ids, values, event_ms, strict=True):
            self.seen[(plan.name, entity)] = (int(t), [float(v) for v in row])


def _assert_same_tables(plans: list[ViewPlan], ours: Path, theirs: Path) -> None:
    for plan in plans:
        a, b = pq.read_table(ours / f"{plan.name}.parquet"), pq.read_table(theirs / f"{plan.name}.parquet")
        assert a.schema == b.schema, plan.name
        key = [plan.entity_key, "event_timestamp"]
        left = a.to_pandas().sort_values(key, kind="stable").reset_index(drop=True)
        right = b.to_pandas().sort_values(key, kind="stable").reset_index(drop=True)
        assert not left.duplicated(key).any()
        pd.testing.assert_frame_equal(left, right, check_exact=True)


def test_spark_backfill_equals_the_duckdb_backfill_row_for_row(
    spark: SparkSession, repo: tuple[Settings, list[ViewPlan], EventRules], tmp_path: Path
) -> None:
    _, plans, rules = repo
    frame, start, end = _parity_events(rules)
    events = _write(frame, tmp_path / "events.parquet")
    duck_online, spark_online = _LastValues(), _LastValues()
    want = backfill(events, plans, tmp_path / "duckdb", start=start, end=end, rules=rules, online=duck_online)
    got = backfill_spark(
        events, plans, tmp_path / "spark", start=start, end=end, rules=rules, spark=spark, online=spark_online
    )

    assert want.accepted < want.events_read < len(frame)  # the rules did drop events, and the range some more
    assert (got.events_read, got.accepted, got.dropped) == (want.events_read, want.accepted, want.dropped)
    by_view = {v.view: (v.rows, v.entities) for v in want.views}
    assert {v.view: (v.rows, v.entities) for v in got.views} == by_view
    assert all(rows > 1000 for rows, _ in by_view.values())
    _assert_same_tables(plans, tmp_path / "spark", tmp_path / "duckdb")
    assert not list((tmp_path / "spark").glob(".*")), "staging parts left behind"
    # --materialize: each entity's values as of its last event, the same as the DuckDB engine's.
    assert spark_online.seen.keys() == duck_online.seen.keys()
    for key, (t, values) in duck_online.seen.items():
        assert spark_online.seen[key][0] == t, key
        np.testing.assert_array_equal(spark_online.seen[key][1], values, err_msg=str(key))


def test_spark_predicate_accepts_what_the_stream_accepts(spark: SparkSession) -> None:
    """``EventRules.sql_valid("spark")`` against :meth:`InputBounds.problem`, the stream's check, on edge cases."""
    bounds = InputBounds(max_id_length=8, max_amount=100.0)
    rules = EventRules(0, 0, 0, bounds)
    ids = ["ok", "", None, "x" * 8, "x" * 9, "\U0001f600" * 8, "\U0001f600" * 9, "a\nb", "ab\n", "a\x00", "a\x1f",
           "a\x7f", "a\x9f", "a\xa0", "é" * 8, "\u2028"]  # fmt: skip
    amounts = [0.0, 100.0, 100.0001, -0.0, -1e-9, float("nan"), float("inf"), float("-inf"), None, 5.0]
    records = [{"event_id": "e", "user_id": i, "merchant_id": "m", "amount": 1.0} for i in ids]
    records += [{"event_id": "e", "user_id": "u", "merchant_id": i, "amount": 1.0} for i in ids]
    records += [{"event_id": "e", "user_id": "u", "merchant_id": "m", "amount": a} for a in amounts]
    for n, record in enumerate(records):
        record["n"] = n
    schema = "event_id string, user_id string, merchant_id string, amount double, n int"
    frame = spark.createDataFrame([tuple(r[c] for c in ("event_id", "user_id", "merchant_id", "amount", "n"))
                                   for r in records], schema)  # fmt: skip
    accepted = {row.n for row in frame.where(rules.sql_valid("spark")).select("n").collect()}
    assert accepted == {r["n"] for r in records if bounds.problem(r, ID_FIELDS) is None}


def test_the_cli_backfills_with_spark(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Into a data directory whose name holds Hadoop's glob characters (Spark expands them in read paths)."""
    data = tmp_path / "my data[1]{x}"
    monkeypatch.setenv("STREAMSCORE_DATA_DIR", str(data))
    assert CliRunner().invoke(app, ["features", "apply"]).exit_code == 0
    config = GeneratorConfig(events=1_500, users=40, merchants=10, rate=1.0, seed=2)
    events = _write(generate_frame(config), data / "small?.parquet")
    end = last_event_time(config)
    argv = ["features", "backfill", "--events", str(events), "--start", config.start.isoformat(),
            "--end", end.isoformat(), "--engine", "spark", "--master", "local[2]", "--json"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["streamscore", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr()
    assert exited.value.code == 0, out.err
    summary = json.loads(out.out)
    assert summary["accepted"] > 1000
    settings = Settings(data_dir=data, metrics_port=0)
    plans = load_plans(settings)
    report = backfill(events, plans, tmp_path / "duckdb", start=config.start, end=end, rules=rules_for(settings, plans))
    assert summary["views"] == [asdict(v) | {"path": str(data / "offline" / f"{v.view}.parquet")}
                                for v in report.views]  # fmt: skip
    _assert_same_tables(plans, data / "offline", tmp_path / "duckdb")
    # One-row DuckDB batches: every entity and same-instant pair cut by a batch's end (both once went wrong).
    rules = rules_for(settings, plans)
    one_by_one = backfill(
        events, plans, tmp_path / "one-by-one", start=config.start, end=end, rules=rules, chunk_rows=1
    )
    assert [(v.rows, v.entities) for v in one_by_one.views] == [(v.rows, v.entities) for v in report.views]
    _assert_same_tables(plans, tmp_path / "one-by-one", tmp_path / "duckdb")
    assert spark.sparkContext._jsc is not None, "the CLI stopped the session it did not start"


@pytest.mark.parametrize(
    ("env", "extra", "code", "line"),
    [
        ({"STREAMSCORE_FEATURES__BACKFILL_ENGINE": "spark"}, [], 1,
         "error: the spark backfill needs PySpark: pip install 'pyspark>=4,<5'"),
        ({}, ["--engine", "spark"], 1, "error: the spark backfill needs PySpark"),
        ({}, ["--engine", "dask"], 2, "usage error: Invalid value: --engine must be duckdb or spark"),
        ({}, ["--master", "local[2]"], 2, "usage error: Invalid value: --master is for --engine spark"),
    ],
)  # fmt: skip
def test_without_pyspark_the_spark_engine_is_one_line(
    env: dict[str, str],
    extra: list[str],
    code: int,
    line: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)  # `import pyspark` raises ImportError
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STREAMSCORE_DATA_DIR", str(tmp_path))
    argv = ["features", "backfill", "--events", __file__, "--start", "2026-01-01", "--end", "2026-01-02", *extra]
    monkeypatch.setattr(sys, "argv", ["streamscore", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    err = [text for text in capsys.readouterr().err.splitlines() if text.strip()]
    assert exited.value.code == code, err
    assert len(err) == 1, err
    assert err[0].startswith(line), err
