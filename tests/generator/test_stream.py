"""Emission order, event-time arrivals, record validity and bounded memory."""

from __future__ import annotations

import tracemalloc
import uuid
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from streamscore.generator import GeneratorConfig, generate, generate_frame
from streamscore.generator.arrivals import DAY_MS, DiurnalClock
from streamscore.serde import Serde


def _lag_ms(frame: pd.DataFrame) -> np.ndarray:
    """How far behind the newest event time already emitted each event is (0 = in order)."""
    times = frame["event_time"].astype("int64").to_numpy()
    newest_before = np.maximum.accumulate(np.concatenate([[times[0]], times[:-1]]))
    return np.maximum(newest_before - times, 0)


def test_out_of_order_and_late_events_at_about_the_configured_rates():
    config = GeneratorConfig(
        events=50_000,
        seed=5,
        rate=4.0,
        start=datetime(2026, 1, 1, 12, tzinfo=UTC),  # busy hours: about two hours of traffic
        out_of_order_rate=0.05,
        late_rate=0.01,
    )
    frame = generate_frame(config)
    lag = _lag_ms(frame)
    shuffled = (lag > 0) & (lag <= 5_000)
    late = lag > 9 * 60_000
    assert shuffled.mean() == pytest.approx(config.out_of_order_rate, rel=0.2)
    # Late events near the end of the stream are flushed early (there is no later traffic to wait for).
    assert 0.5 * config.late_rate < late.mean() < 1.2 * config.late_rate
    assert lag.max() <= 60 * 60_000
    # Nothing between "a little" and "far" behind, except in the flushed last hour.
    settled = (frame["event_time"] < frame["event_time"].max() - pd.Timedelta(hours=1)).to_numpy()
    assert settled.mean() > 0.5
    assert not (settled & (lag > 5_000) & (lag <= 9 * 60_000)).any()


def test_no_disorder_when_rates_are_zero():
    frame = generate_frame(GeneratorConfig(events=20_000, seed=2, out_of_order_rate=0.0, late_rate=0.0))
    assert frame["event_time"].is_monotonic_increasing


def test_event_times_follow_the_mean_rate_over_whole_days():
    rate = 3.0
    clock = DiurnalClock(rate=rate, start_ms=DAY_MS * 20_000)  # midnight
    times = clock.next_ms(np.random.default_rng(0).exponential(size=int(rate * 86_400 * 2)))
    assert (times[-1] - times[0]) / DAY_MS == pytest.approx(2.0, rel=0.01)
    assert (np.diff(times) >= 0).all()


def test_clock_continues_across_calls():
    draws = np.random.default_rng(1).exponential(size=1000)
    whole = DiurnalClock(2.0, 1_700_000_123_456).next_ms(draws)
    split = DiurnalClock(2.0, 1_700_000_123_456)
    assert np.array_equal(np.concatenate([split.next_ms(draws[:300]), split.next_ms(draws[300:])]), whole)
    assert whole[0] >= 1_700_000_123_456


def test_every_record_encodes_and_decodes_to_itself():
    serde = Serde("transaction")
    config = GeneratorConfig(events=4000, seed=9, fraud_rate=0.05, drift_at=datetime(2026, 1, 1, 0, 0, 20, tzinfo=UTC))
    records = [record for chunk in generate(config) for record in chunk]
    assert [serde.decode(serde.encode(record)) for record in records] == records


def test_record_types():
    records = next(generate(GeneratorConfig(events=500, seed=1)))
    assert list(records[0]) == [
        "event_id",
        "user_id",
        "merchant_id",
        "amount",
        "currency",
        "country",
        "channel",
        "event_time",
        "is_fraud",
    ]
    for record in records:
        assert uuid.UUID(record["event_id"]).version == 4
        assert str(uuid.UUID(record["event_id"])) == record["event_id"]
        assert type(record["amount"]) is float
        assert type(record["is_fraud"]) is bool
        assert record["event_time"].utcoffset().total_seconds() == 0
        assert record["event_time"].microsecond % 1000 == 0


@pytest.mark.parametrize(("events", "chunk_size"), [(0, 10), (1, 10), (10, 10), (25_001, 5000), (7, 3)])
def test_chunks_are_bounded(events, chunk_size):
    sizes = [len(chunk) for chunk in generate(GeneratorConfig(events=events, seed=1), chunk_size=chunk_size)]
    assert sum(sizes) == events
    assert all(0 < size <= chunk_size for size in sizes)
    assert all(size == chunk_size for size in sizes[:-1])


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="chunk_size"):
        next(generate(GeneratorConfig(events=5), chunk_size=0))


def test_memory_stays_bounded_while_streaming():
    # Holding 100k records would take ~100 MB of dicts and strings; streaming holds a chunk and the
    # small disorder buffer.
    config = GeneratorConfig(events=100_000, seed=4)
    tracemalloc.start()
    try:
        count = sum(len(chunk) for chunk in generate(config, chunk_size=2000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == config.events
    assert peak < 15_000_000


def test_empty_stream():
    frame = generate_frame(GeneratorConfig(events=0))
    assert frame.empty
    assert list(frame.columns)[-2:] == ["event_time", "is_fraud"]
