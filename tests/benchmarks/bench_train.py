"""``streamscore models train`` end to end: the function the CLI calls, on 100k and 1M labelled transactions, its
wall time split into its phases (``TrainResult.seconds``: dataset, fit, export, gate, register).

For each size, transactions are generated over 8 days (a user per 50 of them, a merchant per 500, every one
labelled) and backfilled with the project's definitions into a fresh data directory (its own Feast registry
and MLflow database, so the model is the first and is gated against the baseline only). Training covers the
last 7 days: the first is the 24 h windows' warm-up, as ``make demo`` and the retrainer leave it out, so the
labelled rows are about 7/8 of the events. The offline store is the ASOF plugin (the default). The baseline is
the dataset phase alone through Feast's own DuckDB store, asked 10k label rows a call as training did before
the plugin, at 100k rows (``BASELINE_LIMIT_S`` stops it); 100k against 1M shows how each phase grows.
No Kafka or Redis. ``python -m tests.benchmarks train`` (parts: ``100k``, ``1m``).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path

from streamscore.settings import Settings
from tests.benchmarks.features_common import backfilled_history, say, seconds_in_child

SIZES = {"100k": 100_000, "1m": 1_000_000}  # labelled rows in the training range
PARTS = tuple(SIZES)
DAYS = 8  # the first one is warm-up
BASELINE_AT = "100k"
BASELINE_LIMIT_S = 600.0
PHASES = ("dataset", "fit", "export", "gate", "register")


@dataclass
class Result:
    labelled: int  # label rows the model saw (train + validation + test)
    events: int
    history: int  # offline rows, both views
    prepare_s: float  # generate + backfill
    seconds: dict[str, float]  # phase -> seconds
    epochs: int
    roc_auc: float
    baseline_dataset_s: float | None = None  # Feast's DuckDB store, 10k rows a call
    baseline_stopped: bool = False


def _settings(root: Path, store: str = "asof") -> Settings:
    return Settings(data_dir=root, metrics_port=0, training={"offline_store": store})


def prepare(root: Path, labelled: int) -> tuple[int, int, datetime, datetime]:
    """Generate and backfill under ``root``; returns (events, offline rows, training start, end)."""
    events = labelled * DAYS // (DAYS - 1)
    span = timedelta(days=DAYS)
    start, history = backfilled_history(_settings(root), events, span)
    return events, history, start + timedelta(days=1), start + span


def _baseline_child(root: str, start: datetime, end: datetime, conn: Connection) -> None:
    from streamscore.store import feature_store
    from streamscore.training import build_training_set

    os.dup2(2, 1)  # DuckDB's progress bars: to stderr with the rest of the progress, not into the Markdown
    settings = _settings(Path(root), "duckdb")
    started = time.perf_counter()
    build_training_set(settings, feature_store(settings), Path(root) / "events.parquet", start, end)
    conn.send(time.perf_counter() - started)


def baseline(root: Path, start: datetime, end: datetime) -> float | None:
    """Seconds of the dataset phase through Feast's DuckDB store, or None past ``BASELINE_LIMIT_S``."""
    return seconds_in_child("duckdb", _baseline_child, (str(root), start, end), BASELINE_LIMIT_S)


def bench(part: str) -> Result:
    from streamscore.training import train

    with tempfile.TemporaryDirectory(prefix="streamscore-bench-train-") as tmp:
        root = Path(tmp)
        say(f"train: {SIZES[part]:,} labelled rows, generate and backfill")
        clock = time.perf_counter()
        events, history, start, end = prepare(root, SIZES[part])
        prepare_s = time.perf_counter() - clock
        say(f"train: {events:,} events, {history:,} offline rows in {prepare_s:.0f} s; training (ASOF store)")
        result = train(_settings(root), events=root / "events.parquet", start=start, end=end, kind="mlp", seed=0)
        say("train: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items()))
        out = Result(
            sum(result.rows.values()), events, history, prepare_s, dict(result.seconds), result.epochs,
            result.card.metrics["roc_auc"],
        )  # fmt: skip
        if part == BASELINE_AT:
            say(f"train: the dataset phase through Feast's DuckDB store (stopped after {BASELINE_LIMIT_S:.0f} s)")
            out.baseline_dataset_s = baseline(root, start, end)
            out.baseline_stopped = out.baseline_dataset_s is None
        return out


def markdown(results: list[Result]) -> str:
    lines = [
        "### `streamscore models train` end to end (MLP, seconds per phase)\n",
        "| labelled rows | events | offline rows | dataset | fit (epochs) | export | gate | register | total "
        "| test ROC-AUC |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r.seconds
        lines.append(
            f"| {r.labelled:,} | {r.events:,} | {r.history:,} | {s['dataset']:.2f} | {s['fit']:.1f} ({r.epochs}) "
            f"| {s['export']:.2f} | {s['gate']:.2f} | {s['register']:.2f} | {sum(s.values()):.1f} | {r.roc_auc:.3f} |"
        )
    notes = []
    for r in results:
        if r.baseline_stopped:
            notes.append(
                f"Baseline: the dataset phase of {r.labelled:,} rows through Feast's DuckDB store (10k rows a call) "
                f"was stopped at {BASELINE_LIMIT_S:.0f} s (> {BASELINE_LIMIT_S / r.seconds['dataset']:,.0f}x the "
                "ASOF store)."
            )
        elif r.baseline_dataset_s is not None:
            notes.append(
                f"Baseline: the dataset phase of {r.labelled:,} rows through Feast's DuckDB store (10k rows a call, "
                f"as training asked it before the plugin): {r.baseline_dataset_s:.1f} s, "
                f"{r.baseline_dataset_s / r.seconds['dataset']:,.0f}x the ASOF store's {r.seconds['dataset']:.1f} s."
            )
    if len(results) == 2:
        small, large = results
        growth = ", ".join(f"{p} {large.seconds[p] / small.seconds[p]:.1f}x" for p in PHASES)
        notes.append(f"{large.labelled / small.labelled:.0f}x the rows: {growth}.")
    notes.append(
        f"Transactions over {DAYS} days (a user per 50, a merchant per 500, all labelled), backfilled, then "
        f"`train()` (what the CLI calls) on the last {DAYS - 1} (the first is warm-up) with the defaults: ASOF "
        f"offline store, MLP, early stopping on validation PR-AUC, {os.cpu_count()} cores. Generate + backfill: "
        + ", ".join(f"{r.prepare_s:.0f} s for {r.events:,} events" for r in results)
        + "."
    )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def run(parts: list[str] | None = None) -> str:
    selected = list(parts or PARTS)
    unknown = set(selected) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown train benchmark part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    return markdown([bench(part) for part in PARTS if part in selected])


if __name__ == "__main__":
    import sys

    print(run(sys.argv[1:] or None))
