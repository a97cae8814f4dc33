"""An independent pandas recomputation of every window, written from the documented semantics only:
at instant t, a window W with slide s covers events with floor(t/s)*s + s - W <= event_time <= t."""

from __future__ import annotations

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
            out[f.name] = (times[-1] - times[-2]) / 1000.0 if len(times) >= 2 else np.nan
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
