"""What makes an event acceptable: validation, lateness and duplicates, shared by stream and backfill.

Both paths must drop exactly the same events or training and serving drift apart, so the rules live in
one place and the backfill's SQL mirrors :meth:`EventRules.invalid_reason` (see ``backfill.py``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["Deduplicator", "EventRules"]


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


class Deduplicator:
    """Event ids seen recently, per user, forgotten once the user's watermark leaves them behind.

    An id is kept while its event could still be accepted (``time >= user watermark - allowed lag``); a
    repeat of an older one is late anyway. So a repeat is dropped exactly when the backfill's "first
    copy wins" would drop it, with memory bounded by each user's last ``allowed lag`` of events.
    """

    def __init__(self, allowed_lag_ms: int) -> None:
        self.allowed_lag_ms = allowed_lag_ms
        self._ids: set[str] = set()
        self._by_user: dict[str, deque[tuple[int, str]]] = {}

    def seen(self, user: str, event_id: str, time_ms: int, user_watermark_ms: int) -> bool:
        """True if ``event_id`` is a repeat; records it otherwise. ``user_watermark_ms``: the user's newest
        accepted event time so far (any value at or below the truth is safe)."""
        queue = self._by_user.get(user)
        if queue is None:
            queue = self._by_user[user] = deque()
        cutoff = user_watermark_ms - self.allowed_lag_ms
        while queue and queue[0][0] < cutoff:
            self._ids.discard(queue.popleft()[1])
        if event_id in self._ids:
            return True
        self._ids.add(event_id)
        queue.append((time_ms, event_id))
        return False

    def forget_user(self, user: str) -> None:
        for _, event_id in self._by_user.pop(user, ()):
            self._ids.discard(event_id)

    def __len__(self) -> int:
        return len(self._ids)

    def to_dict(self) -> dict[str, list[tuple[int, str]]]:
        return {user: list(q) for user, q in self._by_user.items() if q}

    @classmethod
    def from_dict(cls, allowed_lag_ms: int, data: dict[str, list[tuple[int, str]]]) -> Deduplicator:
        dedup = cls(allowed_lag_ms)
        for user, entries in data.items():
            dedup._by_user[user] = deque((int(t), str(i)) for t, i in entries)
            dedup._ids.update(str(i) for _, i in entries)
        return dedup
