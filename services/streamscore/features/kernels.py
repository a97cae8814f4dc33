"""numba kernels: apply a batch of events to per-entity tile rings and read window values.

Layout (one :class:`~streamscore.features.state.ViewState` per view): ``E`` entity rows, ``N`` tiles per
ring (longest window / slide), ``C`` numeric columns, ``J`` numeric window lengths, ``K`` distinct slots.

Per entity we keep, besides the ring of tiles, one *running* aggregate per window length. When the
entity's newest tile moves forward, the tiles that fall out of each window are subtracted (count, sum) and
min/max are rescanned only if a leaving tile held the extreme. So applying an event and reading all
windows both cost O(J·C), independent of the window length: that is what lets the backfill emit a row
per event. Sums are float64: subtraction leaves rounding residue of ~1e-12 relative, so a window that
empties is reset to exactly 0.

count_distinct is exact: per entity, the distinct values with the tile they were last seen in. A user
visits few merchants an hour, so exact sets are small, match the batch path and pandas bit for bit, and
need no sketch error budget.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "APPLIED",
    "DROPPED_OLD",
    "NEED_DISTINCT_SPACE",
    "apply_and_read",
    "apply_events",
    "gate_events",
    "read_features",
]

APPLIED = 0
DROPPED_OLD = 1  # older than the ring: contributes to no window at the entity's current time
NEED_DISTINCT_SPACE = 2  # the distinct-value table of an entity is full: grow and resume

F_COUNT, F_SUM, F_MEAN, F_MIN, F_MAX, F_DISTINCT, F_SINCE = 0, 1, 2, 3, 4, 5, 6
NO_TIME = np.iinfo(np.int64).min


@njit(cache=True, nogil=True)
def _reset_window(r_cnt, r_sum, r_min, r_max, e, j):  # type: ignore[no-untyped-def]
    r_cnt[e, j] = 0
    for c in range(r_sum.shape[2]):
        r_sum[e, j, c] = 0.0
        r_min[e, j, c] = np.inf
        r_max[e, j, c] = -np.inf


@njit(cache=True, nogil=True)
def _advance(e, k_new, cur_k, windows, tile_id, t_cnt, t_sum, t_min, t_max, r_cnt, r_sum, r_min, r_max):  # type: ignore[no-untyped-def]
    """Move entity ``e``'s newest tile to ``k_new``, expiring what leaves each window."""
    k_old = cur_k[e]
    n = tile_id.shape[1]
    n_cols = t_sum.shape[2]
    if k_old >= 0:
        for j in range(windows.shape[0]):
            w = windows[j]
            if k_new - k_old >= w:
                _reset_window(r_cnt, r_sum, r_min, r_max, e, j)
                continue
            rescan = False
            for kk in range(k_old - w + 1, k_new - w + 1):
                slot = kk % n
                if kk >= 0 and tile_id[e, slot] == kk and t_cnt[e, slot] > 0:
                    r_cnt[e, j] -= t_cnt[e, slot]
                    for c in range(n_cols):
                        r_sum[e, j, c] -= t_sum[e, slot, c]
                        if t_min[e, slot, c] <= r_min[e, j, c] or t_max[e, slot, c] >= r_max[e, j, c]:
                            rescan = True
            if r_cnt[e, j] == 0:
                _reset_window(r_cnt, r_sum, r_min, r_max, e, j)
            elif rescan:
                for c in range(n_cols):
                    r_min[e, j, c] = np.inf
                    r_max[e, j, c] = -np.inf
                for kk in range(max(k_new - w + 1, k_old - n + 1), k_old + 1):
                    slot = kk % n
                    if kk >= 0 and tile_id[e, slot] == kk and t_cnt[e, slot] > 0:
                        for c in range(n_cols):
                            r_min[e, j, c] = min(r_min[e, j, c], t_min[e, slot, c])
                            r_max[e, j, c] = max(r_max[e, j, c], t_max[e, slot, c])
    cur_k[e] = k_new


@njit(cache=True, nogil=True)
def _apply_one(  # type: ignore[no-untyped-def]
    i, e, t, values, dv, slide_ms, windows, distinct_horizon, cur_k, max_t, prev_t, tile_id, t_cnt, t_sum,
    t_min, t_max, r_cnt, r_sum, r_min, r_max, d_val, d_last, d_n,
):  # fmt: skip
    """Apply event ``i`` (entity row ``e``, time ``t``, distinct value id ``dv``); returns its status."""
    n = tile_id.shape[1]
    n_cols = t_sum.shape[2]
    k = t // slide_ms
    if distinct_horizon > 0 and dv >= 0:
        found = False
        for q in range(d_n[e]):
            if d_val[e, q] == dv:
                found = True
                break
        if not found and d_n[e] >= d_val.shape[1]:
            # Compact: drop values last seen before the longest distinct window.
            ck = max(cur_k[e], k)
            keep = 0
            for q in range(d_n[e]):
                if d_last[e, q] > ck - distinct_horizon:
                    d_val[e, keep] = d_val[e, q]
                    d_last[e, keep] = d_last[e, q]
                    keep += 1
            d_n[e] = keep
            if keep >= d_val.shape[1]:
                return NEED_DISTINCT_SPACE
    if cur_k[e] < 0 or k > cur_k[e]:
        _advance(e, k, cur_k, windows, tile_id, t_cnt, t_sum, t_min, t_max, r_cnt, r_sum, r_min, r_max)
    ck = cur_k[e]
    if k <= ck - n:
        return DROPPED_OLD
    slot = k % n
    if tile_id[e, slot] != k:
        tile_id[e, slot] = k
        t_cnt[e, slot] = 0
        for c in range(n_cols):
            t_sum[e, slot, c] = 0.0
            t_min[e, slot, c] = np.inf
            t_max[e, slot, c] = -np.inf
    t_cnt[e, slot] += 1
    for c in range(n_cols):
        x = values[i, c]
        t_sum[e, slot, c] += x
        t_min[e, slot, c] = min(t_min[e, slot, c], x)
        t_max[e, slot, c] = max(t_max[e, slot, c], x)
    for j in range(windows.shape[0]):
        if k > ck - windows[j]:
            r_cnt[e, j] += 1
            for c in range(n_cols):
                x = values[i, c]
                r_sum[e, j, c] += x
                r_min[e, j, c] = min(r_min[e, j, c], x)
                r_max[e, j, c] = max(r_max[e, j, c], x)
    if distinct_horizon > 0 and dv >= 0 and k > ck - distinct_horizon:
        placed = False
        for q in range(d_n[e]):
            if d_val[e, q] == dv:
                d_last[e, q] = max(d_last[e, q], k)
                placed = True
                break
        if not placed:
            d_val[e, d_n[e]] = dv
            d_last[e, d_n[e]] = k
            d_n[e] += 1
    if t > max_t[e]:
        prev_t[e] = max_t[e]
        max_t[e] = t
    elif t > prev_t[e]:
        prev_t[e] = t
    return APPLIED


@njit(cache=True, nogil=True)
def apply_events(  # type: ignore[no-untyped-def]
    start, rows, times, values, distinct, slide_ms, windows, distinct_horizon, cur_k, max_t, prev_t, tile_id,
    t_cnt, t_sum, t_min, t_max, r_cnt, r_sum, r_min, r_max, d_val, d_last, d_n, status,
):  # fmt: skip
    """Apply events ``start..`` in order; returns the index to resume from (``len`` when done).

    ``rows[i]`` is the entity row, ``times[i]`` epoch ms, ``values[i, c]`` the numeric columns,
    ``distinct[i]`` the id of the distinct column's value (-1 if none). ``status[i]`` receives APPLIED or
    DROPPED_OLD. Stops early, without applying event ``i``, when the entity's distinct table is full.
    """
    for i in range(start, rows.shape[0]):
        code = _apply_one(
            i, rows[i], times[i], values, distinct[i], slide_ms, windows, distinct_horizon, cur_k, max_t, prev_t,
            tile_id, t_cnt, t_sum, t_min, t_max, r_cnt, r_sum, r_min, r_max, d_val, d_last, d_n,
        )  # fmt: skip
        if code == NEED_DISTINCT_SPACE:
            return i
        status[i] = code
    return rows.shape[0]


@njit(cache=True, nogil=True)
def _read_one(i, e, kinds, cols, wins, dwins, cur_k, max_t, prev_t, r_cnt, r_sum, r_min, r_max, d_last, d_n, out):  # type: ignore[no-untyped-def]
    for f in range(kinds.shape[0]):
        kind = kinds[f]
        j = wins[f]
        c = cols[f]
        if kind == F_COUNT:
            out[i, f] = r_cnt[e, j]
        elif kind == F_SUM:
            out[i, f] = r_sum[e, j, c] if r_cnt[e, j] > 0 else 0.0
        elif kind == F_MEAN:
            out[i, f] = r_sum[e, j, c] / r_cnt[e, j] if r_cnt[e, j] > 0 else np.nan
        elif kind == F_MIN:
            out[i, f] = r_min[e, j, c] if r_cnt[e, j] > 0 else np.nan
        elif kind == F_MAX:
            out[i, f] = r_max[e, j, c] if r_cnt[e, j] > 0 else np.nan
        elif kind == F_DISTINCT:
            lo = cur_k[e] - dwins[j]
            m = 0
            for q in range(d_n[e]):
                if d_last[e, q] > lo:
                    m += 1
            out[i, f] = m
        else:
            out[i, f] = (max_t[e] - prev_t[e]) / 1000.0 if prev_t[e] != NO_TIME else np.nan


@njit(cache=True, nogil=True)
def read_features(rows, kinds, cols, wins, dwins, cur_k, max_t, prev_t, r_cnt, r_sum, r_min, r_max, d_last, d_n, out):  # type: ignore[no-untyped-def]
    """Window values as of each entity's newest event, one output row per entry of ``rows``.

    ``kinds/cols/wins`` describe each feature (function code, numeric column, window index); ``dwins``
    holds distinct windows in tiles. Nulls are NaN (callers map them to Feast nulls).
    """
    for i in range(rows.shape[0]):
        _read_one(
            i, rows[i], kinds, cols, wins, dwins, cur_k, max_t, prev_t, r_cnt, r_sum, r_min, r_max, d_last, d_n, out
        )


@njit(cache=True, nogil=True)
def gate_events(rows, times, seen_max, allowed_lag_ms, late):  # type: ignore[no-untyped-def]
    """Mark late events in arrival order against a per-entity watermark.

    The watermark of an entity is the newest event time seen for it minus the source's
    ``watermark_delay_threshold``; an event more than the allowed lateness behind it is late
    (``allowed_lag_ms`` = delay + lateness). Per entity rather than per partition, because a partition's
    interleaving differs between runs but one key's order does not: the stream and the backfill then
    drop exactly the same events.
    """
    for i in range(rows.shape[0]):
        e = rows[i]
        t = times[i]
        if seen_max[e] != NO_TIME and t < seen_max[e] - allowed_lag_ms:
            late[i] = True
        else:
            late[i] = False
            if t > seen_max[e]:
                seen_max[e] = t


@njit(cache=True, nogil=True)
def apply_and_read(  # type: ignore[no-untyped-def]
    start, rows, times, values, distinct, slide_ms, windows, distinct_horizon, kinds, cols, wins, dwins,
    cur_k, max_t, prev_t, tile_id, t_cnt, t_sum, t_min, t_max, r_cnt, r_sum, r_min, r_max, d_val, d_last, d_n,
    status, out,
):  # fmt: skip
    """The backfill's loop: apply each event, then read its entity's windows as of that event into
    ``out[i]``. Events must be in event-time order per entity for the rows to be point-in-time values."""
    for i in range(start, rows.shape[0]):
        e = rows[i]
        code = _apply_one(
            i, e, times[i], values, distinct[i], slide_ms, windows, distinct_horizon, cur_k, max_t, prev_t,
            tile_id, t_cnt, t_sum, t_min, t_max, r_cnt, r_sum, r_min, r_max, d_val, d_last, d_n,
        )  # fmt: skip
        if code == NEED_DISTINCT_SPACE:
            return i
        status[i] = code
        _read_one(i, e, kinds, cols, wins, dwins, cur_k, max_t, prev_t, r_cnt, r_sum, r_min, r_max, d_last, d_n, out)
    return rows.shape[0]
