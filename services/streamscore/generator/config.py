"""What a generated stream looks like: one frozen, validated :class:`GeneratorConfig`.

Everything that shapes the output lives here, so that a config (plus the code version) names one stream
exactly: the same config always yields the same records in the same emission order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = ["GeneratorConfig", "to_epoch_ms"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

# Above this, a "burst" no longer describes the stream: most events would be fraud and the normal traffic
# that bursts are scattered over (and that fraud features compare against) would thin out.
MAX_FRAUD_RATE = 0.5


def to_epoch_ms(moment: datetime) -> int:
    """Whole milliseconds since the Unix epoch, exactly (no float round trip), rounding down."""
    return (moment - _EPOCH) // _MS


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """Parameters of a synthetic card-transaction stream.

    ``rate`` is the mean number of events per second of *event time*, averaged over a day; the actual rate
    follows a daily cycle (quiet at night, busiest mid-afternoon UTC). ``fraud_rate`` is the fraction of
    events that belong to fraud bursts. From ``drift_at`` on, amounts, channel mix and merchants shift.
    ``out_of_order_rate`` and ``late_rate`` are the fractions of events emitted a few seconds, resp.
    10 to 60 minutes, after their event time would place them.

    >>> GeneratorConfig(events=1000, seed=7).rate
    100.0
    >>> GeneratorConfig(events=10, start=datetime(2026, 1, 1))
    Traceback (most recent call last):
    ...
    ValueError: start must be timezone-aware (UTC), got 2026-01-01 00:00:00
    """

    events: int
    users: int = 1000
    merchants: int = 200
    seed: int = 0
    rate: float = 100.0
    start: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    fraud_rate: float = 0.01
    drift_at: datetime | None = None
    out_of_order_rate: float = 0.01
    late_rate: float = 0.001

    def __post_init__(self) -> None:
        for name in ("events", "users", "merchants", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.events < 0:
            raise ValueError(f"events must be >= 0, got {self.events}")
        if self.users < 1 or self.merchants < 1:
            raise ValueError(f"users and merchants must be >= 1, got {self.users} and {self.merchants}")
        if self.seed < 0:  # numpy's SeedSequence only takes non-negative entropy
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a positive number of events per second, got {self.rate}")
        if not 0 <= self.fraud_rate <= MAX_FRAUD_RATE:
            raise ValueError(f"fraud_rate must be within [0, {MAX_FRAUD_RATE}], got {self.fraud_rate}")
        for name in ("out_of_order_rate", "late_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.out_of_order_rate + self.late_rate > 1:
            raise ValueError("out_of_order_rate + late_rate must not exceed 1")
        for name in ("start", "drift_at"):
            moment = getattr(self, name)
            if moment is not None and moment.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware (UTC), got {moment}")

    @property
    def start_ms(self) -> int:
        return to_epoch_ms(self.start)

    @property
    def drift_ms(self) -> int | None:
        return None if self.drift_at is None else to_epoch_ms(self.drift_at)
