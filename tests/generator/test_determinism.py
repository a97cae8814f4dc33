"""One config names one stream: identical on rerun (through Parquet too), whatever the chunking."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pandas as pd
import pytest

from streamscore.generator import GeneratorConfig, generate, generate_frame, write_parquet

CONFIG = GeneratorConfig(events=20_000, users=300, merchants=80, seed=7, rate=50.0, fraud_rate=0.02)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_frame(CONFIG)


def test_same_config_same_frame(frame):
    pd.testing.assert_frame_equal(generate_frame(CONFIG), frame)


def test_same_config_same_records():
    first = [record for chunk in generate(CONFIG, chunk_size=4096) for record in chunk]
    again = [record for chunk in generate(CONFIG, chunk_size=4096) for record in chunk]
    assert first == again
    assert len(first) == CONFIG.events


def test_records_and_frame_are_the_same_stream(frame):
    records = pd.DataFrame([record for chunk in generate(CONFIG) for record in chunk])
    records["event_time"] = records["event_time"].astype("datetime64[ms, UTC]")
    pd.testing.assert_frame_equal(records, frame)


@pytest.mark.parametrize("chunk_size", [1, 999, 8192, 50_000])
def test_chunking_does_not_change_the_stream(frame, chunk_size):
    small = GeneratorConfig(events=3000, seed=7) if chunk_size == 1 else CONFIG
    expected = frame if small is CONFIG else generate_frame(small)
    pd.testing.assert_frame_equal(generate_frame(small, chunk_size=chunk_size), expected)


def test_parquet_output_is_byte_identical(tmp_path, frame):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert write_parquet(CONFIG, first, row_group_size=6000) == CONFIG.events
    assert write_parquet(CONFIG, second, row_group_size=6000) == CONFIG.events
    assert first.read_bytes() == second.read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(first), frame)


def test_different_seed_different_stream(frame):
    other = generate_frame(replace(CONFIG, seed=8))
    assert len(other) == len(frame)
    assert not set(other["event_id"]) & set(frame["event_id"])
    assert not other["amount"].equals(frame["amount"])
    assert not other["user_id"].equals(frame["user_id"])


def test_drift_leaves_the_stream_before_it_untouched(frame):
    drift_at = datetime(2026, 1, 1, 0, 6, tzinfo=UTC)
    drifted = generate_frame(replace(CONFIG, drift_at=drift_at))
    before = frame["event_time"] < drift_at
    assert 0.2 < before.mean() < 0.8
    pd.testing.assert_frame_equal(drifted[before], frame[before])
    # Same events after it too, only with drifted attributes.
    assert drifted["event_id"].equals(frame["event_id"])
    assert not drifted.loc[~before, "amount"].equals(frame.loc[~before, "amount"])
