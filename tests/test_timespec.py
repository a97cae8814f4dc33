"""Times and durations as typed on the command line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streamscore.timespec import TimespecError, parse_duration, parse_instant

NOW = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # a DST night in Europe: nothing here may depend on local time


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", timedelta(seconds=90)), ("30m", timedelta(minutes=30)), ("1h30m", timedelta(minutes=90)),
     ("2d", timedelta(days=2)), ("250ms", timedelta(milliseconds=250)), ("1.5h", timedelta(minutes=90)),
     (" 2H ", timedelta(hours=2))],
)  # fmt: skip
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "-1h", "0s", "nat", "1h-30m", "h", "2 d"])
def test_what_is_not_a_positive_duration(text: str) -> None:
    with pytest.raises(TimespecError, match="positive duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["90", "1.5", " 30 "])
def test_a_bare_number_wants_a_unit(text: str) -> None:
    """pandas read a bare number as nanoseconds: `report --since 90` wrote an empty report, exit 0."""
    with pytest.raises(TimespecError, match="has no unit: say 90s"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("now", NOW), ("-2d", NOW - timedelta(days=2)), ("-90m", NOW - timedelta(minutes=90)),
     ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
     ("2026-11-01T08:30:00", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
     ("2026-11-01T08:30:00+02:00", datetime(2026, 11, 1, 6, 30, tzinfo=UTC))],
)  # fmt: skip
def test_instants_are_utc(text: str, expected: datetime) -> None:
    got = parse_instant(text, now=NOW)
    assert got == expected
    assert got.utcoffset() == timedelta(0)


def test_now_is_the_clock_when_not_given() -> None:
    before = datetime.now(tz=UTC)
    got = parse_instant("-1h")
    assert before - timedelta(hours=1) <= got <= datetime.now(tz=UTC) - timedelta(hours=1)
    assert got.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "-2", "-soon", "11/01/2026"])
def test_what_is_not_a_time_says_what_is(text: str) -> None:
    with pytest.raises(TimespecError) as caught:
        parse_instant(text, now=NOW)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2
