"""What makes an event acceptable: validation, lateness and duplicates, shared by stream and backfill.

Both paths must drop exactly the same events or training and serving drift apart, so the rules live in
one place and the backfill's SQL mirrors :meth:`EventRules.invalid_reasons` (see ``backfill.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamscore.bounds import InputBounds, true_where

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
        """The backfill's form of :meth:`invalid_reasons`'s id and amount checks (a DuckDB or Spark SQL predicate)."""
        return self.bounds.sql_valid(ID_FIELDS, dialect=dialect)

    def invalid_reasons(self, table: pa.Table, now_ms: int) -> np.ndarray:
        """Per decoded transaction (a column batch), a short reason code if it must not touch any feature,
        else None: an object array."""
        reasons = self.bounds.problems({name: table.column(name) for name in (*ID_FIELDS, "amount")}, ID_FIELDS)
        times = pc.cast(table.column("event_time"), pa.int64())
        timing = np.full(len(reasons), None, object)
        timing[true_where(pc.greater(times, now_ms + self.max_future_ms))] = "event-time-in-future"
        timing[true_where(pc.is_null(times))] = "missing-event-time"
        return np.where(reasons.astype(bool), reasons, timing)
