"""Where a stream lies on the wall clock: its last event, and the start that ends it by a given moment.

A stream's span is not ``events / rate``: the daily cycle stretches it at night (0.3x the mean rate) and
shrinks it in the afternoon, and a fraud burst may run minutes past the last ordinary event. A start
computed as "now minus events / rate" therefore put the newest events hours in the *future* when run at
night, and the processor dead-lettered them as ``future``. So the span is measured on the stream itself:
only event times are drawn (no strings, no emission order), which costs a fraction of generating it.

A start pinned to a time of day gives the same stream at whatever hour it is asked for, shifted by whole
days (the daily cycle is the only thing that ties a stream to the calendar): tests and demos that need
the same number of frauds in the same windows every time pin it.

>>> from datetime import UTC, datetime, time
>>> config = GeneratorConfig(events=500, rate=0.05, seed=1)
>>> night = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
>>> start = start_ending_by(config, night)
>>> last_event_time(replace(config, start=start)) <= night
True
>>> pinned = start_ending_by(config, night, time_of_day=time(8, 0))
>>> (pinned.time(), last_event_time(replace(config, start=pinned)) <= night)
(datetime.time(8, 0), True)
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

from streamscore.generator.config import GeneratorConfig, to_epoch_ms
from streamscore.generator.events import event_time_blocks
from streamscore.generator.profiles import Population

__all__ = ["last_event_time", "start_ending_by"]

_DAY = timedelta(days=1)
# A start that ends the stream this close before the wanted end is good enough: the search stops there.
_SLACK_S = 1.0
_MAX_STEPS = 40
_MS = timedelta(milliseconds=1)


def last_event_time(config: GeneratorConfig) -> datetime:
    """The event time of the stream's newest event (``config.start`` for an empty stream)."""
    last_ms = config.start_ms
    people = Population.build(config.users, config.merchants, config.seed)
    for block in event_time_blocks(config, people):
        last_ms = max(last_ms, int(block["event_ms"][-1]))  # blocks are in event-time order
    return datetime.fromtimestamp(last_ms / 1000, tz=UTC)


def start_ending_by(config: GeneratorConfig, end: datetime, *, time_of_day: time | None = None) -> datetime:
    """The start at which ``config``'s stream has its newest event at or before ``end``, as close to it as
    the search gets (within a second); ``config.start`` is ignored.

    With ``time_of_day`` the start is the latest one at that UTC time of day that still ends by ``end``:
    the same stream whatever the hour, at the price of ending up to a day before ``end``.
    """
    if end.utcoffset() is None:
        raise ValueError(f"end must be timezone-aware (UTC), got {end}")
    end = end.astimezone(UTC)
    if time_of_day is not None:
        return _pinned_start(config, end, time_of_day)

    # last(start) is continuous and increasing (the draws are fixed; only the clock they map through moves),
    # but its slope is rate(start) / rate(last), anywhere between 0.2 and 5.7 with the daily cycle: a plain
    # "shift by the overshoot" step diverges, so the root is bracketed and found by regula falsi (Illinois).
    def overshoot_s(start: datetime) -> float:
        return (last_event_time(replace(config, start=start)) - end).total_seconds()

    lo = hi = end - timedelta(seconds=config.events / config.rate)
    f_lo = f_hi = overshoot_s(lo)
    while f_lo > 0:  # too late: step back until the stream ends by `end`
        hi, f_hi = lo, f_lo
        lo = lo - timedelta(seconds=2 * f_lo)
        f_lo = overshoot_s(lo)
    if f_hi <= 0:
        hi = end
        f_hi = overshoot_s(hi)  # >= 0: the stream starts at `end`
    w_lo, w_hi, side = f_lo, f_hi, 0  # interpolation weights; Illinois halves the side that keeps winning
    for _ in range(_MAX_STEPS):
        if f_lo >= -_SLACK_S or hi - lo <= 2 * _MS:
            break
        guess = _floor_ms(lo + (hi - lo) * (w_lo / (w_lo - w_hi)))
        guess = min(max(guess, lo + _MS), hi - _MS)
        f = overshoot_s(guess)
        if f <= 0:
            lo, f_lo, w_lo = guess, f, f
            w_hi = w_hi / 2 if side == -1 else w_hi
            side = -1
        else:
            hi, f_hi, w_hi = guess, f, f
            w_lo = w_lo / 2 if side == 1 else w_lo
            side = 1
    return lo


def _pinned_start(config: GeneratorConfig, end: datetime, time_of_day: time) -> datetime:
    start = datetime.combine(end.date(), time_of_day.replace(tzinfo=UTC))
    if start > end:
        start -= _DAY
    overshoot = last_event_time(replace(config, start=start)) - end
    if overshoot > timedelta(0):
        start -= _DAY * math.ceil(overshoot / _DAY)
    return start


def _floor_ms(moment: datetime) -> datetime:
    return datetime.fromtimestamp(to_epoch_ms(moment) / 1000, tz=UTC)
