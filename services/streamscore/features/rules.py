"""What makes an event acceptable: validation, lateness and duplicates, shared by stream and backfill.

Both paths must drop exactly the same events or training and serving drift apart, so the rules live in
one place and the backfill's SQL mirrors :meth:`EventRules.invalid_reason` (see ``backfill.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["EventRules"]


@dataclass(frozen=True)
class EventRules:
    watermark_delay_ms: int  # the Feast source's watermark_delay_threshold
    allowed_lateness_ms: int
    max_future_ms: int

    @property
    def allowed_lag_ms(self) -> int:
        """How far behind its entity's newest event an event may be and still count."""
        return self.watermark_delay_ms + self.allowed_lateness_ms

    def invalid_reason(self, record: dict[str, Any], now_ms: int) -> str | None:
        """A short reason code if the decoded transaction must not touch any feature, else None."""
        for key in ("event_id", "user_id", "merchant_id"):
            if not record.get(key):
                return f"missing-{key.replace('_', '-')}"
        amount = record.get("amount")
        if not isinstance(amount, float | int) or not math.isfinite(amount):
            return "amount-not-finite"
        if amount < 0:
            return "amount-negative"
        event_time = record.get("event_time")
        if not isinstance(event_time, datetime):
            return "missing-event-time"
        if event_time.timestamp() * 1000 > now_ms + self.max_future_ms:
            return "event-time-in-future"
        return None
