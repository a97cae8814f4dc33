"""What makes an event acceptable: validation, lateness and duplicates, shared by stream and backfill.

Both paths must drop exactly the same events or training and serving drift apart, so the rules live in
one place and the backfill's SQL mirrors :meth:`EventRules.invalid_reason` (see ``backfill.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from streamscore.bounds import InputBounds

__all__ = ["ID_FIELDS", "EventRules"]

ID_FIELDS = ("event_id", "user_id", "merchant_id")


@dataclass(frozen=True)
class EventRules:
    watermark_delay_ms: int  # the Feast source's watermark_delay_threshold
    allowed_lateness_ms: int
    max_future_ms: int
    bounds: InputBounds = field(default_factory=InputBounds)

    @property
    def allowed_lag_ms(self) -> int:
        """How far behind its entity's newest event an event may be and still count."""
        return self.watermark_delay_ms + self.allowed_lateness_ms

    def sql_valid(self, dialect: Literal["duckdb", "spark"] = "duckdb") -> str:
        """The backfill's form of :meth:`invalid_reason`'s id and amount checks (a DuckDB or Spark SQL predicate)."""
        return self.bounds.sql_valid(ID_FIELDS, dialect=dialect)

    def invalid_reason(self, record: dict[str, Any], now_ms: int) -> str | None:
        """A short reason code if the decoded transaction must not touch any feature, else None."""
        reason = self.bounds.problem(record, ID_FIELDS)
        if reason is not None:
            return reason
        event_time = record.get("event_time")
        if not isinstance(event_time, datetime):
            return "missing-event-time"
        if event_time.timestamp() * 1000 > now_ms + self.max_future_ms:
            return "event-time-in-future"
        return None
