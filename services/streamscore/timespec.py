"""Times and durations as people type them on a command line: ``90s``, ``1h30m``, ``2026-11-01T00:00``,
``-2d``, ``now``.

Relative instants exist because the data a user just made is relative: ``streamscore generate`` ends its
events just before now, so a documented ``--start 2026-11-01`` matches nothing a week later while
``--start -2d`` always does. A bare number is refused rather than given a unit: pandas reads ``90`` as
nanoseconds, which once produced an empty report and exit 0. Plain regular expressions, no pandas: every
command parses its options, and ``--help`` must start fast.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from streamscore.errors import StreamscoreError

__all__ = ["TimespecError", "parse_duration", "parse_instant"]

_UNITS = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_DURATION = re.compile(rf"(?:{_PART.pattern})+")
EXAMPLES = "90s, 15m, 2h, 1h30m, 2d"


class TimespecError(StreamscoreError, ValueError):
    """A time or duration that cannot be read; the message shows what can."""

    exit_code = 2


def parse_duration(text: str) -> timedelta:
    """A positive duration such as ``90s``, ``30m``, ``1h30m`` or ``2d``.

    >>> parse_duration("1h30m"), parse_duration("250ms")
    (datetime.timedelta(seconds=5400), datetime.timedelta(microseconds=250000))
    """
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
        raise TimespecError(f"{text!r} has no unit: say {EXAMPLES}")
    if not _DURATION.fullmatch(cleaned):
        raise TimespecError(f"cannot read {text!r} as a positive duration (examples: {EXAMPLES})")
    value = timedelta(seconds=sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(cleaned)))
    if value <= timedelta(0):
        raise TimespecError(f"cannot read {text!r} as a positive duration (examples: {EXAMPLES})")
    return value


def parse_instant(text: str, *, now: datetime | None = None) -> datetime:
    """An instant in UTC: ISO 8601 (a time without an offset is UTC), ``now``, or ``-DURATION`` before now.

    >>> now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    >>> print(parse_instant("-2d", now=now), parse_instant("2026-11-01", now=now))
    2026-12-05 12:00:00+00:00 2026-11-01 00:00:00+00:00
    """
    cleaned = text.strip()
    current = now or datetime.now(tz=UTC)
    if cleaned.lower() == "now":
        return current
    if cleaned.startswith("-"):  # no ISO 8601 time starts with a minus
        return current - parse_duration(cleaned[1:])
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise TimespecError(
            f"cannot read {text!r} as a time: give ISO 8601 (2026-11-01 or 2026-11-01T08:30:00, UTC unless it has"
            f" an offset), now, or a time before now such as -2d or -90m"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
