"""Where a stream lies on the wall clock, at any hour: the last event never in the future, a pinned phase
giving the same stream whatever the hour, and `streamscore generate` ending its stream just before now."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from streamscore import cli
from streamscore.cli import generate as generate_command
from streamscore.generator import GeneratorConfig, generate_frame, last_event_time, start_ending_by

HOURS = (0, 6, 12, 18)
CONFIG = GeneratorConfig(events=3000, rate=0.2, seed=4, users=200, merchants=50)


@pytest.mark.parametrize("hour", HOURS)
def test_the_stream_ends_just_before_the_wanted_end(hour: int):
    end = datetime(2026, 12, 7, hour, 17, tzinfo=UTC)
    start = start_ending_by(CONFIG, end)
    frame = generate_frame(replace(CONFIG, start=start))
    newest = frame["event_time"].max().to_pydatetime()
    assert newest == last_event_time(replace(CONFIG, start=start))
    assert end - timedelta(seconds=1) <= newest <= end


def test_events_over_rate_is_not_the_span():
    """Why the span is measured: at night the daily cycle stretches it by hours, so "end minus events/rate"
    (the old default) put the newest events in the future at some hours of the day."""
    overshoots = []
    for hour in HOURS:
        end = datetime(2026, 12, 7, hour, tzinfo=UTC)
        naive = end - timedelta(seconds=CONFIG.events / CONFIG.rate)
        overshoots.append(last_event_time(replace(CONFIG, start=naive)) - end)
    assert max(overshoots) > timedelta(hours=1)


def test_a_pinned_phase_is_the_same_stream_at_any_hour():
    frames = []
    for hour in HOURS:
        end = datetime(2026, 12, 7, hour, 30, tzinfo=UTC)
        start = start_ending_by(CONFIG, end, time_of_day=time(8))
        assert start.time() == time(8)
        assert last_event_time(replace(CONFIG, start=start)) <= end
        assert end - start < timedelta(days=2)  # the latest such start, not just any
        frame = generate_frame(replace(CONFIG, start=start))
        frame["event_time"] -= pd.Timedelta(start - datetime(2026, 1, 1, 8, tzinfo=UTC))
        frames.append(frame)
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frame, frames[0])


def test_a_naive_end_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        start_ending_by(CONFIG, datetime(2026, 1, 1))


@pytest.mark.parametrize("hour", HOURS)
def test_generate_without_start_never_writes_the_future(hour: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    now = datetime(2026, 12, 7, hour, 0, 5, tzinfo=UTC)

    class Clock(datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
            return now

    monkeypatch.setattr(generate_command, "datetime", Clock)
    out = tmp_path / "h.parquet"
    args = ["generate", "--to", str(out), "--events", "3000", "--rate", "0.2", "--users", "200", "--merchants", "50"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    newest = pd.read_parquet(out)["event_time"].max().to_pydatetime()
    assert now - timedelta(seconds=1) <= newest <= now
