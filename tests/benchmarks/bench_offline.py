"""Training-set joins: ``get_historical_features`` of ``fraud_model_v1`` through the ASOF offline store and the
Spark offline store (local mode, every core) against Feast's own DuckDB store, on the same registry, Parquet
tables and label rows.

For each size, that many transactions are generated over 7 days (a user per 50 of them, a merchant per 500) and
backfilled with the project's definitions; every transaction is then one label row, asking for the features as
of one millisecond before it, as ``streamscore.training`` asks. Each store answers in a fresh process (so
neither inherits the other's caches), after a 100-row warm-up that loads the registry and DuckDB; the timed
span is one ``get_historical_features(...).to_df()`` of all the rows. Feast's store is stopped after
``BASELINE_LIMIT_S``. The frames of the stores that finished are compared cell for cell after sorting by row.
No Kafka or Redis. ``python -m tests.benchmarks offline`` (parts: ``10k``, ``100k``, ``1m``).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path

import pandas as pd

from tests.benchmarks.features_common import ChildFailed, backfilled_history, say, seconds_in_child

SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
PARTS = tuple(SIZES)
SPAN = timedelta(days=7)
SERVICE = "fraud_model_v1"
WARMUP_ROWS = 100
BASELINE_LIMIT_S = 180.0
STORES = {"duckdb": "Feast's DuckDB store", "asof": "ASOF store", "spark": "Spark store"}


@dataclass
class Result:
    rows: int
    history: int  # offline rows, both views
    seconds: dict[str, float | str]  # store -> seconds, or why it has none (stopped at the limit, failed)
    same: bool | None  # the frames of the stores that finished are equal, None: fewer than two finished


def prepare(root: Path, events: int) -> int:
    """Generate ``events`` transactions, backfill them under ``root`` (its own registry) and write the label
    rows to ``root/labels.parquet``; returns the offline tables' row count."""
    from streamscore.settings import Settings
    from streamscore.training.dataset import ENTITY_OFFSET

    _, history = backfilled_history(Settings(data_dir=root, metrics_port=0), events, SPAN)
    raw = pd.read_parquet(root / "events.parquet", columns=["user_id", "merchant_id", "event_time"])
    labels = pd.DataFrame(
        {
            "row_id": range(len(raw)),
            "user_id": raw["user_id"],
            "merchant_id": raw["merchant_id"],
            "event_timestamp": raw["event_time"].astype("datetime64[ms, UTC]") - ENTITY_OFFSET,
        }
    )
    labels.to_parquet(root / "labels.parquet")
    return history


def _child(root: str, store: str, out: str, conn: Connection) -> None:
    """In a fresh process: warm up, then time one join of every label row and write its frame to ``out``."""
    from streamscore.settings import Settings
    from streamscore.store import feature_store, quiet_feast

    settings = Settings(data_dir=Path(root), metrics_port=0, training={"offline_store": store})
    fs = feature_store(settings)
    labels = pd.read_parquet(Path(root) / "labels.parquet")
    with quiet_feast():
        service = fs.get_feature_service(SERVICE)
        fs.get_historical_features(entity_df=labels.head(WARMUP_ROWS).copy(), features=service).to_df()
        conn.send("ready")
        started = time.perf_counter()
        frame = fs.get_historical_features(entity_df=labels, features=service).to_df()
        seconds = time.perf_counter() - started
    frame.sort_values("row_id").reset_index(drop=True).to_parquet(out)
    conn.send(seconds)


def timed(root: Path, store: str, limit_s: float | None) -> float | str:
    """Seconds ``store`` takes for every label row under ``root``, or why not: past ``limit_s``, or the
    baseline failed (Feast's range join at 1M rows spills until the disk is full)."""
    args = (str(root), store, str(root / f"frame-{store}.parquet"))
    try:
        seconds = seconds_in_child(store, _child, args, limit_s, ready_s=300)
    except ChildFailed as exc:
        if limit_s is None:  # ours must not fail
            raise
        return f"failed ({str(exc).removeprefix(f'{store}: ')})"
    return f"stopped at {limit_s:.0f} s" if seconds is None else seconds


def bench(size: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="streamscore-bench-offline-") as tmp:
        root = Path(tmp)
        say(f"offline: {size:,} transactions, generate and backfill")
        history = prepare(root, size)
        seconds: dict[str, float | str] = {}
        for store in STORES:
            say(f"offline: {size:,} label rows through {STORES[store]}")
            seconds[store] = timed(root, store, BASELINE_LIMIT_S if store == "duckdb" else None)
        frames = [pd.read_parquet(root / f"frame-{store}.parquet") for store in STORES if _done(seconds[store])]
        same = all(frame.equals(frames[0]) for frame in frames[1:]) if len(frames) > 1 else None
        return Result(size, history, seconds, same)


def _done(seconds: float | str) -> bool:
    return not isinstance(seconds, str)


def markdown(results: list[Result]) -> str:
    def cells(rows: int, seconds: float | str) -> str:
        if isinstance(seconds, str):
            return f"{seconds} | -"
        return f"{seconds:.2f} | {rows / seconds:,.0f}"

    lines = [
        "### Training-set join (`get_historical_features` of fraud_model_v1, label rows/s)\n",
        "| label rows | offline rows | Feast's DuckDB store (s) | rows/s | ASOF store (s) | rows/s | ASOF speed-up "
        "| Spark store (s) | rows/s | Spark speed-up | same frames |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]

    def ratio(theirs: float | str, ours: float | str) -> str:
        if isinstance(ours, str):
            return "-"
        if isinstance(theirs, str):
            return f"> {BASELINE_LIMIT_S / ours:,.1f}x" if theirs.startswith("stopped") else "-"
        return f"{theirs / ours:,.1f}x"

    for r in results:
        theirs = r.seconds["duckdb"]
        same = {True: "yes", False: "**no**", None: "-"}[r.same]
        lines.append(
            f"| {r.rows:,} | {r.history:,} | {cells(r.rows, theirs)} | {cells(r.rows, r.seconds['asof'])} | "
            f"{ratio(theirs, r.seconds['asof'])} | {cells(r.rows, r.seconds['spark'])} | "
            f"{ratio(theirs, r.seconds['spark'])} | {same} |"
        )
    lines.append(
        f"\nOne call of all label rows per store, each in a fresh process after a {WARMUP_ROWS}-row warm-up, on "
        f"{os.cpu_count()} cores (DuckDB uses them all; Spark runs `local[*]`, its session started in the warm-up). "
        "History: the transactions backfilled over 7 days, a user per 50, a merchant per 500; each view's ttl is "
        f"2 days. Feast's store is stopped after {BASELINE_LIMIT_S:.0f} s. `same frames`: the finished stores' "
        "frames equal cell for cell, dtypes included, sorted by row.\n"
    )
    return "\n".join(lines)


def run(parts: list[str] | None = None) -> str:
    selected = list(parts or PARTS)
    unknown = set(selected) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown offline benchmark part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    return markdown([bench(SIZES[part]) for part in PARTS if part in selected])


if __name__ == "__main__":
    import sys

    print(run(sys.argv[1:] or None))
