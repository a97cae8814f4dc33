"""When transactions happen: a non-homogeneous Poisson process with a daily cycle.

Card traffic is quiet at night and peaks in the afternoon; windowed features and drift detectors that
were only ever tested on a flat rate miss that. Arrivals are drawn by time change: a unit-rate Poisson
process (cumulative sums of Exp(1) draws) is mapped through the inverse of the cumulative intensity
``Lambda(t)``. ``Lambda`` has a closed form for a sinusoid; its inverse is read from a one-second table of
one day by linear interpolation, which is exact at the grid points and smooth enough in between.

>>> clock = DiurnalClock(rate=2.0, start_ms=0)
>>> times = clock.next_ms(np.ones(4))
>>> times.tolist() == sorted(times.tolist()), int(times[0]) > 0
(True, True)
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

__all__ = ["AMPLITUDE", "DAY_MS", "PEAK_HOUR", "DiurnalClock"]

DAY_S = 86_400
DAY_MS = DAY_S * 1000
PEAK_HOUR = 15.0  # UTC; the trough is twelve hours away, at 03:00
AMPLITUDE = 0.7  # rate swings between 0.3x and 1.7x its daily mean


class DiurnalClock:
    """Turns Exp(1) draws into event times (epoch ms) whose rate is ``rate * (1 + A sin(...))``.

    Stateful: each call continues where the previous one stopped, so a stream can be drawn block by block
    and come out exactly as if it had been drawn at once.
    """

    def __init__(self, rate: float, start_ms: int, amplitude: float = AMPLITUDE, peak_hour: float = PEAK_HOUR) -> None:
        if not 0 <= amplitude < 1:
            raise ValueError(f"amplitude must be within [0, 1) so the rate stays positive, got {amplitude}")
        self.rate = rate
        self.start_ms = start_ms
        self.amplitude = amplitude
        self.peak_hour = peak_hour
        self._day0_ms = start_ms - start_ms % DAY_MS
        omega = 2 * math.pi / DAY_S
        phase = math.pi / 2 - omega * peak_hour * 3600
        self._grid = np.arange(DAY_S + 1, dtype=np.float64)
        # Closed-form integral of the intensity from midnight, in expected events.
        self._table = rate * (self._grid + amplitude / omega * (math.cos(phase) - np.cos(omega * self._grid + phase)))
        self._per_day = float(self._table[-1])
        into_day_s = (start_ms - self._day0_ms) / 1000
        self._position = float(np.interp(into_day_s, self._grid, self._table))

    def next_ms(self, draws: NDArray[np.float64]) -> NDArray[np.int64]:
        """The next ``len(draws)`` arrival times, given their Exp(1) inter-arrival draws; non-decreasing."""
        if len(draws) == 0:
            return np.empty(0, dtype=np.int64)
        cumulative = self._position + np.cumsum(draws)
        self._position = float(cumulative[-1])
        days, into_day = np.divmod(cumulative, self._per_day)
        seconds = days * DAY_S + np.interp(into_day, self._table, self._grid)
        times: NDArray[np.int64] = self._day0_ms + np.floor(seconds * 1000).astype(np.int64)
        return times
