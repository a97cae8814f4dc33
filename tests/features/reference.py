"""An independent pandas recomputation of every window, written from the documented semantics only:
at instant t, a window W with slide s covers events with floor(t/s)*s + s - W <= event_time <= t;
seconds_since_previous is the gap between the two newest events, null unless the previous one's tile is
still inside the view's ring (the ``plan.n_tiles`` tiles up to the newest event's)."""

from __future__ import annotations

from collections import deque

import numpy as np
import pandas as pd

from streamscore.features.plan import ViewPlan


def reference_at(plan: ViewPlan, events: pd.DataFrame, entity: str, t_ms: int) -> dict[str, float]:
    """Feature values of one entity as of ``t_ms`` from its events (columns: key, time_ms, columns...)."""
    mine = events[(events[plan.entity_key] == entity) & (events["time_ms"] <= t_ms)]
    out: dict[str, float] = {}
    s = plan.slide_ms
    for f in plan.features:
        if f.function == "seconds_since_previous":
            times = np.sort(mine["time_ms"].to_numpy())
            inside = len(times) >= 2 and times[-2] // s > times[-1] // s - plan.n_tiles
            out[f.name] = (times[-1] - times[-2]) / 1000.0 if inside else np.nan
            continue
        lo = (t_ms // s) * s + s - f.window_ms
        win = mine[mine["time_ms"] >= lo][f.column]
        if f.function == "count":
            out[f.name] = float(len(win))
        elif f.function == "sum":
            out[f.name] = float(win.sum())
        elif f.function == "mean":
            out[f.name] = float(win.mean()) if len(win) else np.nan
        elif f.function == "min":
            out[f.name] = float(win.min()) if len(win) else np.nan
        elif f.function == "max":
            out[f.name] = float(win.max()) if len(win) else np.nan
        elif f.function == "count_distinct":
            out[f.name] = float(win.nunique())
    return out


class ReferenceDeduplicator:
    """Event ids seen recently, per user, forgotten once the user's watermark leaves them behind (the ingest
    stage's former ``rules.Deduplicator``): an id is remembered while ``time >= watermark - allowed lag``,
    purging each user's ids oldest first (in arrival order) up to the first one still inside."""

    def __init__(self, allowed_lag_ms: int) -> None:
        self.allowed_lag_ms = allowed_lag_ms
        self._ids: set[str] = set()
        self._by_user: dict[str, deque[tuple[int, str]]] = {}

    def seen(self, user: str, event_id: str, time_ms: int, user_watermark_ms: int) -> bool:
        queue = self._by_user.setdefault(user, deque())
        cutoff = user_watermark_ms - self.allowed_lag_ms
        while queue and queue[0][0] < cutoff:
            self._ids.discard(queue.popleft()[1])
        if event_id in self._ids:
            return True
        self._ids.add(event_id)
        queue.append((time_ms, event_id))
        return False
