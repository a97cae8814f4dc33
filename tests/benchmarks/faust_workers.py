"""faust workers the feature benchmarks run as child processes (``python -m tests.benchmarks.faust_workers MODE``).

``bare``: the ceiling of faust itself. One agent takes batches (``noack_take(5000, within=0.1)``, as the
processor does), acknowledges them and does nothing else.

``naive``: the design the feature processor replaces, as the issue describes it. One agent per event
(``async for event in stream.events()``), faust's own windowed tables, hopping with a 60 s step (our
slide) for the user windows 5m / 1h / 24h, each holding (count, sum, max) so one table per window length
gives count, sum, mean and max; then one ``FeatureStore.write_to_online_store`` of a one-row DataFrame per
event. ``feature_repo`` defines no PushSource (the views read a KafkaSource), so ``FeatureStore.push`` has
nothing to push to: ``write_to_online_store`` is the per-event write Feast offers, and ``push`` would call
the same provider ``ingest_df`` after resolving the push source.

Both write ``{"n", "n_first", "t_first", "t_last"}`` (events seen; events and wall time at the end of the
first batch/event; wall time of the last) to the JSON file ``BENCH_STATS``, so the parent times the steady
part without the start-up.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

WINDOWS_S = {"5m": 300, "1h": 3600, "24h": 86400}
STEP_S = 60


class _Stats:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.n = 0
        self.n_first = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self._written = 0.0
        self.split: dict[str, float] = {}  # seconds per part, events after the first only

    def add(self, count: int, force: bool = False) -> None:
        now = time.time()
        if self.n == 0:
            self.n_first, self.t_first = count, now
        self.n += count
        self.t_last = now
        if force or now - self._written > 0.2:
            self._written = now
            tmp = self.path.with_suffix(".tmp")
            data = {"n": self.n, "n_first": self.n_first, "t_first": self.t_first, "t_last": now}
            data.update({f"s_{k}": v for k, v in self.split.items()})
            tmp.write_text(json.dumps(data))
            tmp.replace(self.path)


def _app(mode: str) -> Any:
    import faust

    from streamscore.features.app import _faust_broker
    from streamscore.settings import load_settings

    settings = load_settings()
    stats = _Stats(Path(os.environ["BENCH_STATS"]))
    app = faust.App(
        settings.features.group_id,
        **_faust_broker(settings),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.topics.partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.features.session_timeout_s,
        broker_heartbeat_interval=settings.features.session_timeout_s / 3,
        stream_buffer_maxsize=max(4096, 2 * settings.features.batch_size),
        loghandlers=[],
    )
    topic = app.topic(
        settings.topics.transactions, value_type=bytes, key_type=bytes, value_serializer="raw", key_serializer="raw"
    )

    if mode == "bare":
        noack = os.environ.get("BENCH_NOACK") == "1"

        @app.agent(topic, name="bare_agent")  # type: ignore[untyped-decorator]
        async def bare(stream: Any) -> None:
            async for events in stream.noack_take(settings.features.batch_size, within=0.1):
                if not noack:
                    for event in events:
                        await stream.ack(event)
                stats.add(len(events), force=True)

        return app

    import numpy as np
    import pandas as pd

    from streamscore.serde import Serde
    from streamscore.store import feature_store, quiet_feast

    serde = Serde("transaction")
    store = feature_store(settings)
    with quiet_feast():
        view = store.get_stream_feature_view("user_transactions")
    names = [f.name for f in view.features if f.name != "user_id"]
    tables = {
        label: app.Table(
            f"naive-user-{label}",
            default=lambda: (0, 0.0, -math.inf),
            partitions=settings.topics.partitions,
        ).hopping(size, STEP_S, expires=size)
        for label, size in WINDOWS_S.items()
    }

    def add(current: Any, amount: float) -> tuple[int, float, float]:
        count, total, high = current
        return count + 1, total + amount, max(high, amount)

    @app.agent(topic, name="naive_agent")  # type: ignore[untyped-decorator]
    async def naive(stream: Any) -> None:
        split = stats.split
        async for event in stream.events():
            t0 = time.perf_counter()
            record = serde.decode(event.value)
            user, amount = record["user_id"], float(record["amount"])
            row: dict[str, Any] = {n: [None] for n in names}
            t1 = time.perf_counter()
            for label, size in WINDOWS_S.items():
                windows = tables[label][user]
                windows.apply(add, amount)  # every hopping window holding the event: size / 60 s of them
                count, total, high = windows.delta(size - STEP_S)  # the oldest of them = the trailing window
                row[f"user_amount_count_{label}"] = [count]
                row[f"user_amount_sum_{label}"] = [total]
                row[f"user_amount_mean_{label}"] = [total / count if count else np.nan]
                row[f"user_amount_max_{label}"] = [high if count else np.nan]
            row["user_id"] = [user]
            row["event_timestamp"] = [pd.Timestamp(record["event_time"])]
            t2 = time.perf_counter()
            with quiet_feast():
                store.write_to_online_store("user_transactions", pd.DataFrame(row))
            t3 = time.perf_counter()
            if stats.n:
                for part, seconds in (("decode", t1 - t0), ("faust tables", t2 - t1), ("Feast write", t3 - t2)):
                    split[part] = split.get(part, 0.0) + seconds
            stats.add(1)
            await asyncio.sleep(0)

    return app


def main() -> None:
    import faust

    mode = sys.argv[1]
    if mode not in ("bare", "naive"):
        raise SystemExit(f"usage: python -m tests.benchmarks.faust_workers bare|naive (got {mode!r})")
    app = _app(mode)
    worker = faust.Worker(app, loglevel="warning", redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
