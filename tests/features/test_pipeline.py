"""The central test: the same generated events through the stream processor on the real broker and through the
backfill; every feature of every entity read back with Feast's ``get_online_features`` equals the backfill's
value at the same instant, and both equal the pandas recomputation in ``reference.py`` over the events an
independent implementation of the acceptance rules keeps. Run once straight through and once with the
processor killed -9 mid-stream and restarted."""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamscore.features import load_plans, rules_for
from streamscore.generator import GeneratorConfig, generate_frame, start_ending_by
from streamscore.kafka import ensure_topics, read_dead_letter
from streamscore.settings import Settings
from streamscore.store import apply_definitions
from tests.conftest import free_port
from tests.features.harness import (
    ProcessorProcess,
    accepted_events,
    check_against_backfill,
    isolated_run,
    produce,
    wait_caught_up,
    wait_lag,
    wait_split,
)
from tests.kafka.helpers import drain

pytestmark = pytest.mark.integration

N_EVENTS = 12_000
LATENESS_S = 30.0


def _arrival_stream(seed: int) -> tuple[pd.DataFrame, list[tuple[str, bytes]]]:
    """Generated events plus the bad input a real topic sees, in one arrival order.

    Returns the Parquet-able frame (arrival order, invalid rows and duplicates included) and the extra raw
    messages that are not even Avro."""
    config = GeneratorConfig(
        events=N_EVENTS, users=150, merchants=40, rate=N_EVENTS / (4 * 3600), seed=seed,
        out_of_order_rate=0.03, late_rate=0.01,
    )  # fmt: skip
    config = replace(config, start=start_ending_by(config, datetime.now(tz=UTC)))  # all past, at any hour
    frame = generate_frame(config)
    rng = np.random.default_rng(seed)
    frame["_pos"] = np.arange(len(frame), dtype=float)
    dupes = frame.iloc[rng.choice(len(frame) - 200, 40, replace=False)].copy()
    dupes["_pos"] += 150.5  # the same event sent again a little later
    bad = frame.iloc[rng.choice(len(frame), 6, replace=False)].copy()
    bad["event_id"] = [f"bad-{i}" for i in range(len(bad))]
    bad["amount"] = [-5.0, -0.01, -1e9, np.nan, np.inf, -np.inf]
    bad["_pos"] += 0.5
    future = frame.iloc[100:102].copy()
    future["event_id"] = ["future-0", "future-1"]
    future["event_time"] = pd.Timestamp(datetime.now(tz=UTC) + timedelta(days=2)).floor("ms")
    future["_pos"] += 0.5
    merged = pd.concat([frame, dupes, bad, future]).sort_values("_pos", kind="stable").drop(columns="_pos")
    raw = [("garbage", b"\x01\x02\x03"), ("truncated", b"\xc3\x01\x00")]
    return merged.reset_index(drop=True), raw


@pytest.fixture(params=["straight", "kill-9"])
def run(request: pytest.FixtureRequest, engine: str, settings: Settings, tmp_path: Path) -> tuple[str, Settings, Path]:
    name = f"{request.param}-{tmp_path.name[-12:]}".replace("_", "-")
    # Small batches in the kill run: slow enough to be killed mid-stream on a fast machine.
    straight = request.param == "straight"
    s = isolated_run(
        settings, tmp_path, name, redis_db=1 if straight else 2,
        checkpoint_interval_s=0.5, allowed_lateness_s=LATENESS_S, batch_size=500 if straight else 40, engine=engine,
    )  # fmt: skip
    ensure_topics(s)
    apply_definitions(s)
    return request.param, s, tmp_path


def test_stream_and_backfill_agree_with_pandas(run: tuple[str, Settings, Path]) -> None:
    mode, settings, tmp = run
    plans = load_plans(settings)
    rules = rules_for(settings, plans)
    frame, raw = _arrival_stream(seed=11)
    # The kill run sends the last third only once the processor is frozen mid-stream: then the kill always
    # lands with events applied after the last snapshot and more still to come, however fast this machine is.
    held_back = len(frame) // 3 if mode == "kill-9" else 0
    if mode == "kill-9":
        produce(settings, frame.iloc[: len(frame) - held_back], raw)

    log = tmp / "processor.log"
    if mode == "kill-9":
        first = ProcessorProcess(settings, log).start()
        topics = [settings.topics.transactions]
        deadline = time.monotonic() + 120
        while wait_lag(settings, topics) > len(frame) // 3 and time.monotonic() < deadline:
            assert first.alive(), first.tail()
            time.sleep(0.05)
        first.freeze()
        produce(settings, frame.iloc[len(frame) - held_back :], [])
        assert wait_lag(settings, topics) >= held_back, "frozen processor moved on"
        first.kill()
    if mode == "straight":
        # Scale-out: two processes split the partitions; merchants still come out right via the re-keyed topic.
        ports = free_port(), free_port()
        one_settings, two_settings = (settings.model_copy(update={"metrics_port": p}) for p in ports)
        with ProcessorProcess(one_settings, log) as one, ProcessorProcess(two_settings, tmp / "second.log") as two:
            wait_split(settings, 2)
            produce(settings, frame, raw)
            wait_caught_up(settings, one)
            assert two.alive(), two.tail()
            pages = [urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=10).read().decode() for p in ports]
            metrics = "".join(pages)
        # Each topic is split between the two, not one topic to each (the ingest stage is most of the work).
        for stage in ("features-ingest", "features-rekey"):
            counted = [_sample(page, "streamscore_features_events_in_total", stage) for page in pages]
            assert all(n > 0 for n in counted), (stage, counted, one.tail(), two.tail())
        assert "Traceback" not in two.log.read_text(), two.tail()
    else:  # the restarted processor has nothing local: its state comes back from Kafka, checked
        for local in ("faust", "features"):
            shutil.rmtree(settings.data_dir / local, ignore_errors=True)
        with ProcessorProcess(settings, tmp / "restarted.log") as proc:
            wait_caught_up(settings, proc)
        restarted = (tmp / "restarted.log").read_text()
        assert "state restored" in restarted, restarted[-3000:]
        assert "rebuilding" not in restarted, restarted[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    if mode == "straight":
        for name in (
            "streamscore_features_events_in_total", "streamscore_features_batches_total",
            "streamscore_features_batch_size_bucket", "streamscore_features_late_events_total",
            "streamscore_dead_letters_total", "streamscore_online_write_seconds_bucket",
            "streamscore_features_freshness_seconds_bucket", "streamscore_features_consumer_lag",
        ):  # fmt: skip
            assert name in metrics, name

    # Backfill the same history (arrival order, with its duplicates and invalid rows).
    assert check_against_backfill(settings, plans, rules, frame, tmp) > 150 * 14
    accepted = accepted_events(frame, rules.allowed_lag_ms)

    # Bad input went to the dead-letter topic with its reason; nothing else did.
    letters = drain(settings, settings.topics.dead_letters, group=f"dlq-{mode}-{tmp.name}")
    reasons = Counter(read_dead_letter(m).reason for m in letters)
    assert reasons["amount-negative"] >= 3
    assert reasons["amount-not-finite"] >= 3
    assert reasons["event-time-in-future"] >= 2
    assert reasons["undecodable-bad-magic"] >= 1
    assert reasons["undecodable-truncated"] + reasons["undecodable-corrupt"] >= 1
    # A repeat is "duplicate" while its first copy is remembered and "late" once the user's watermark left
    # it behind (which one depends on batch boundaries); dropped either way, and never applied.
    late = len(frame) - len(accepted) - 40 - 6 - 2  # all rows, minus accepted, repeats, invalid, future
    assert late >= 1
    assert reasons["duplicate"] + reasons["late"] >= 40 + late
    assert reasons["duplicate"] >= 1
    if mode == "straight":
        expected_dead = len(frame) + len(raw) - len(accepted)
        assert sum(reasons.values()) == expected_dead, reasons


def _sample(page: str, name: str, stage: str) -> float:
    prefix = f'{name}{{stage="{stage}"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(prefix))
