"""The feature processor under faults of what it writes to: Redis loses its data (a flush, as after a restart
without its append-only file), an operator asks for a resync, and Redis runs out of memory. The processor never
exits, and every online feature ends equal to the backfill and the pandas reference."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import redis

from streamscore.features import load_plans, rules_for
from streamscore.generator import GeneratorConfig, generate_frame, start_ending_by
from streamscore.settings import Settings, child_env
from tests.conftest import free_port
from tests.features.harness import ProcessorProcess, check_against_backfill, produce, wait_caught_up
from tests.features.test_recovery import _metric, _setup

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _frame(seed: int) -> pd.DataFrame:
    config = GeneratorConfig(events=1200, users=40, merchants=15, rate=1200 / 7200, seed=seed)
    return generate_frame(replace(config, start=start_ending_by(config, datetime.now(tz=UTC))))


def _until_equal(s: Settings, frame: pd.DataFrame, tmp: Path, proc: ProcessorProcess, timeout_s: float = 60) -> int:
    """The online store equals the backfill of ``frame``, within ``timeout_s`` (a repair takes a round)."""
    plans = load_plans(s)
    tmp.mkdir(exist_ok=True)
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return check_against_backfill(s, plans, rules_for(s, plans), frame, tmp, label=f"-{attempt}")
        except (AssertionError, KeyError):
            if time.monotonic() > deadline or not proc.alive():
                raise
            time.sleep(1)


def test_lost_online_data_is_rewritten_from_state_and_redis_oom_only_delays(
    engine: str, settings: Settings, tmp_path: Path
) -> None:
    s = _setup(settings, tmp_path, "repair", redis_db=11, engine=engine)
    s = s.model_copy(update={"metrics_port": free_port()})
    frame = _frame(41)
    half = len(frame) // 2
    db = redis.Redis.from_url(s.redis.url)
    with ProcessorProcess(s, tmp_path / "p.log") as proc:
        produce(s, frame.iloc[:half], [])
        wait_caught_up(s, proc)
        first = _until_equal(s, frame.iloc[:half], tmp_path / "before", proc)
        # Redis loses everything (FLUSHDB: this test's database only; a restart without AOF looks the same).
        db.flushdb()
        assert _until_equal(s, frame.iloc[:half], tmp_path / "flushed", proc) == first
        assert "rewrote" in proc.tail(200)

        # An operator's resync: every partition is rewritten by its owner, and the command says so.
        done = subprocess.run(
            [sys.executable, "-m", "streamscore", "features", "resync", "--wait", "60"],
            cwd=ROOT, env=child_env(s), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "rewrote the online features of" in done.stdout

        # Out of memory under noeviction: writes fail with OOM; the processor waits instead of crashing.
        saved = db.config_get("maxmemory*")
        try:
            db.config_set("maxmemory-policy", "noeviction")
            db.config_set("maxmemory", 1)
            produce(s, frame.iloc[half:], [])
            deadline = time.monotonic() + 60
            while _metric(s.metrics_port, "streamscore_features_online_store_waits_total") == 0:
                assert proc.alive(), proc.tail()
                assert time.monotonic() < deadline, "no online write met the OOM"
                time.sleep(0.5)
            assert proc.alive(), proc.tail()
        finally:
            db.config_set("maxmemory", saved["maxmemory"])
            db.config_set("maxmemory-policy", saved["maxmemory-policy"])
        wait_caught_up(s, proc)
        assert _until_equal(s, frame, tmp_path / "after", proc) >= first
        assert proc.alive()
