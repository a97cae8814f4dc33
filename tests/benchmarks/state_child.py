"""One measurement of the ingest stage's window state, in a process of its own (run by ``bench_state``).

``python tests/benchmarks/state_child.py USERS EVENTS_PER_USER`` with ``PYTHONPATH`` pointing at the
``services`` directory of the tree to measure: this checkout, or the dense-layout baseline checked out
from git. Only the API both trees share is used (``IngestStage.process`` on encoded records), so the same
script measures both. Prints one JSON line: RSS growth per user, stage throughput and, where the tree has
them, the cost of its recovery format (the baseline's whole-state snapshot, or this tree's changed rows).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

DAY_MS = 24 * 3600 * 1000
T0_MS = 1_790_000_000_000  # a fixed day: nothing here depends on the clock


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def _plans():  # type: ignore[no-untyped-def]
    """The production user view, compiled from the Feast definitions file of the tree under test."""
    import importlib.util

    from streamscore.features.plan import compile_views
    from streamscore.resources import feature_repo_dir

    spec = importlib.util.spec_from_file_location("definitions", feature_repo_dir() / "definitions.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return compile_views([module.user_transactions], {"user": "user_id"})


def main(users: int, per_user: int) -> None:
    from streamscore.features.rules import EventRules
    from streamscore.features.stages import IngestStage, InRecord
    from streamscore.serde import Serde

    plans = _plans()
    serde = Serde("transaction")
    stage = IngestStage(plans, EventRules(30_000, 60_000, 300_000), serde, partition_key="user_id")
    state = stage.new_state()
    rng = np.random.default_rng(7)
    n = users * per_user
    times = np.sort(rng.integers(0, DAY_MS, n)) + T0_MS
    who = rng.integers(0, users, n)
    who[:users] = np.arange(users)  # every user at least once
    rng.shuffle(who)
    merchants = rng.integers(0, 5000, n)
    amounts = np.round(rng.lognormal(3, 1, n), 2)
    base = {"currency": "EUR", "country": "DE", "channel": "POS", "is_fraud": False}

    def batch(lo: int, hi: int, prefix: str) -> list[InRecord]:
        records = []
        for i in range(lo, hi):
            record = {
                **base, "event_id": f"{prefix}{i}", "user_id": f"{prefix}{who[i]:07d}",
                "merchant_id": f"m{merchants[i]}", "amount": float(amounts[i]),
                "event_time": datetime.fromtimestamp(times[i] / 1000, tz=UTC),
            }  # fmt: skip
            records.append(InRecord("transactions", 0, i, None, serde.encode(record), []))
        return records

    stage.process(stage.new_state(), batch(0, min(n, 2000), "warm"), now_ms=T0_MS + DAY_MS)  # compiles the kernels
    before = _rss()
    spent = 0.0
    for lo in range(0, n, 20_000):
        records = batch(lo, min(n, lo + 20_000), "u")
        started = time.perf_counter()
        stage.process(state, records, now_ms=T0_MS + DAY_MS)
        spent += time.perf_counter() - started
    del records
    grown = _rss() - before
    view = state.views[plans[0].name]
    out: dict[str, float] = {
        "users": users, "events": n, "bytes_per_user": grown / users, "events_per_s": n / spent,
        "entities": len(view.rows),
    }  # fmt: skip
    if hasattr(view, "to_bytes"):  # the baseline's recovery point: the whole state, every round
        started = time.perf_counter()
        blob = view.to_bytes()
        out["snapshot_s"], out["snapshot_bytes"] = time.perf_counter() - started, len(blob)
    print(json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
