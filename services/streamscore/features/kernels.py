"""numba kernels: apply a batch of events to per-entity sparse tile rings and read window values.

Layout (one :class:`~streamscore.features.state.ViewState` per view): ``E`` entity rows, a ring of ``N``
tiles (longest window / slide), ``C`` numeric columns, ``J`` numeric window lengths.

Why sparse: a dense ring costs ``N`` tiles per entity whether or not they hold events (1,440 one-minute
tiles for 24 h: ~58 KB per user), while a typical user has a handful of events a day. So memory is
proportional to the *non-empty* tiles inside the ring plus a fixed per-entity part:

- per entity row (arrays indexed by row): ``cur_k`` (newest tile id, -1 when none), ``max_t``/``prev_t``
  (newest and second newest event times), ``seen_max`` (the lateness watermark), ``applied`` (highest
  source offset applied, -1 when none), ``dirty``, one *running* aggregate per window (``r_cnt[E,J]``,
  ``r_sum/r_err/r_min/r_max[E,J,C]``), and a descriptor ``(block start, size class, head, length)`` for each of
  its three variable-size tables;
- pools shared by all entities of the view, one per table kind: tiles (``k``, ``cnt``, ``sum[C]``,
  ``min[C]``, ``max[C]``), distinct values (value hash, last tile seen) and event ids (id hash, event time).
  An entity owns one contiguous block of each pool, of a size class from :data:`CAPS` (1, 2, 3, 4, 6, 8,
  12, ...), used as a circular deque. Tiles are kept sorted by tile id, newest at the tail: a new newest
  tile appends, an out-of-order event inserts (a short shift, rare), tiles that leave the ring are popped
  from the head. A full block moves to the next class, a mostly empty one to a smaller class, an empty one
  is freed. Freed blocks go on per-class free lists threaded through the pool's first array; a pool that
  runs out of room makes the kernel stop with :data:`NEED_SPACE` *before* changing anything it cannot
  redo, and Python gives that pool larger arrays (copying only the live blocks when it is mostly freed ones)
  and resumes at the same event.

Only the aggregates some feature reads are kept: ``sum`` for sum/mean, ``min``, ``max``; the others are
arrays with 0 columns.

When the entity's newest tile moves forward, the tiles that fall out of each window are subtracted (count,
sum) and min/max are rescanned only if a leaving tile held the extreme; the leaving tiles are found by a
binary search of the sorted deque. So applying an event and reading all windows both cost O(J·C) amortized
(plus O(log tiles) per window), whatever the window length: that is what lets the backfill emit a row per
event. Running sums are compensated (Neumaier): each window keeps beside ``r_sum`` the low-order part that
additions and subtractions rounded away (``r_err``), and reads ``r_sum + r_err``. Without it a small sum left
after a huge amount leaves is lost to rounding (``(1e20 + 12.5) - 1e20 == 0``; ``1e12 + 0.01 + 0.02 - 1e12``
keeps ~1e-4 of error); with it the error stays within a few ulps of the window's *current* magnitude plus
~n·2⁻¹⁰⁶ of everything that passed through, at two floats per window and column and O(1) per event (the
alternative, recomputing a window from its tiles when the running value has lost precision, costs the
window's tile count and needs a trigger that knows how much was lost). A window that empties is reset to
exactly 0. The windows add and subtract each tile's rounded sum (not the event's value), so a tile leaves
exactly what it brought. Packed rows store the rounded ``r_sum + r_err``; a restore recomputes both from
the tiles.

count_distinct is exact: per entity, the distinct values with the tile they were last seen in; entries older
than the longest distinct window are dropped when the table fills. A user visits few merchants an hour, so
exact sets are small, match the batch path and pandas bit for bit, and need no sketch error budget.

seconds_since_previous is bounded by the ring: null unless the previous event's tile is still inside it.
State is evicted and rebuilt from a replay of the last ring only, so an older gap could not be known after
a recovery, and both paths must agree with what a recovered state computes.

Event-id dedup: per entity the (id hash, event time) of recent events in arrival order, purged against the
entity's lateness watermark (see :func:`dedup_events`).

Packed rows (:func:`pack_rows`): one int64 word array per entity, floats bit-cast, in native byte order:
``layout`` (magic ``SS``, format version, which of sum/min/max are kept, ``C``, ``J``), a CRC of the plan's
slide and windows, ``counts = tiles | distinct << 22 | dedup << 43``, then ``cur_k, max_t, prev_t,
seen_max, applied``; per window ``r_cnt, r_sum[Cs], r_min[Cm], r_max[Cx]``; per tile, oldest first,
``k, cnt, sum[Cs], min[Cm], max[Cx]``; the live distinct ``(value, last tile)`` pairs sorted by value (so
equal states pack to equal bytes); the dedup ``(id hash, time)`` pairs oldest first. A user with ten
events a day packs into ~60 words.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "APPLIED",
    "CAPS",
    "COUNT_BITS",
    "DROPPED_OLD",
    "HEAD_WORDS",
    "NEED_SPACE",
    "NO_TIME",
    "apply_and_read",
    "apply_events",
    "clear_rows",
    "dedup_events",
    "gate_events",
    "pack_rows",
    "pack_sizes",
    "read_features",
    "rebuild_pairs",
    "rebuild_tiles",
    "restore_rows",
]

APPLIED = 0
DROPPED_OLD = 1  # older than the ring: contributes to no window at the entity's current time
NEED_SPACE = 2  # a pool is full: ``need`` says which and how many slots; grow it and resume

POOL_TILES, POOL_DISTINCT, POOL_DEDUP = 0, 1, 2
F_COUNT, F_SUM, F_MEAN, F_MIN, F_MAX, F_DISTINCT, F_SINCE = 0, 1, 2, 3, 4, 5, 6
NO_TIME = np.iinfo(np.int64).min

# Descriptor columns of a per-entity table, and the pool meta words (then one free-list head per class).
BLK, CLS, HEAD, LEN = 0, 1, 2, 3
TOP, USED, FREE = 0, 1, 2


def _size_classes() -> np.ndarray:
    caps = [1]
    p = 2
    while caps[-1] < 2**30:
        caps += [p, p + p // 2]
        p *= 2
    return np.array(caps, np.int64)


CAPS = _size_classes()  # block sizes: 1, 2, 3, 4, 6, 8, 12, ... (at most 1/3 of a block unused when it grows)
N_CLASSES = len(CAPS)
HEAD_WORDS = 8  # layout, fingerprint, counts, cur_k, max_t, prev_t, seen_max, applied
COUNT_BITS = (22, 21, 21)  # tiles, distinct entries, dedup entries in the counts word


# Helpers are inlined at numba IR level (inline="always"): a real call passing the tuples of arrays costs
# more than the work it does.

# --- pools --------------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _class_for(n):  # type: ignore[no-untyped-def]
    c = 0
    while CAPS[c] < n:
        c += 1
    return c


@njit(cache=True, nogil=True, inline="always")
def _alloc(link, meta, cls):  # type: ignore[no-untyped-def]
    """Start of a free block of class ``cls``, or -1 when the pool has no room (nothing changed then)."""
    head = meta[FREE + cls]
    if head >= 0:
        meta[FREE + cls] = link[head]
        meta[USED] += CAPS[cls]
        return head
    cap = CAPS[cls]
    start = meta[TOP]
    if start + cap > link.shape[0]:
        return -1
    meta[TOP] = start + cap
    meta[USED] += cap
    return start


@njit(cache=True, nogil=True, inline="always")
def _release(link, meta, blk, cls):  # type: ignore[no-untyped-def]
    link[blk] = meta[FREE + cls]
    meta[FREE + cls] = blk
    meta[USED] -= CAPS[cls]


@njit(cache=True, nogil=True, inline="always")
def _free_table(link, meta, desc, e):  # type: ignore[no-untyped-def]
    if desc[e, BLK] >= 0:
        _release(link, meta, desc[e, BLK], desc[e, CLS])
    desc[e, BLK] = -1
    desc[e, CLS] = 0
    desc[e, HEAD] = 0
    desc[e, LEN] = 0


@njit(cache=True, nogil=True, inline="always")
def _phys(desc, e, i):  # type: ignore[no-untyped-def]
    """Pool index of element ``i`` (0 = head) of entity ``e``'s deque."""
    p = desc[e, HEAD] + i
    cap = CAPS[desc[e, CLS]]
    if p >= cap:
        p -= cap
    return desc[e, BLK] + p


@njit(cache=True, nogil=True, inline="always")
def _copy_tile(src_arrays, s, dst_arrays, d):  # type: ignore[no-untyped-def]
    p_k, p_cnt, p_sum, p_min, p_max = src_arrays
    q_k, q_cnt, q_sum, q_min, q_max = dst_arrays
    q_k[d] = p_k[s]
    q_cnt[d] = p_cnt[s]
    for c in range(p_sum.shape[1]):
        q_sum[d, c] = p_sum[s, c]
    for c in range(p_min.shape[1]):
        q_min[d, c] = p_min[s, c]
    for c in range(p_max.shape[1]):
        q_max[d, c] = p_max[s, c]


@njit(cache=True, nogil=True)
def _move_tiles(desc, e, cls, tiles, meta):  # type: ignore[no-untyped-def]
    """Move entity ``e``'s tiles to a new block of class ``cls``; False (nothing changed) if no room."""
    blk = _alloc(tiles[0], meta, cls)
    if blk < 0:
        return False
    n = desc[e, LEN]
    for i in range(n):
        _copy_tile(tiles, _phys(desc, e, i), tiles, blk + i)
    if desc[e, BLK] >= 0:
        _release(tiles[0], meta, desc[e, BLK], desc[e, CLS])
    desc[e, BLK] = blk
    desc[e, CLS] = cls
    desc[e, HEAD] = 0
    return True


@njit(cache=True, nogil=True)
def _move_pairs(desc, e, cls, a, b, meta):  # type: ignore[no-untyped-def]
    """The same for a table of (a, b) int64 pairs."""
    blk = _alloc(a, meta, cls)
    if blk < 0:
        return False
    n = desc[e, LEN]
    for i in range(n):
        s = _phys(desc, e, i)
        a[blk + i] = a[s]
        b[blk + i] = b[s]
    if desc[e, BLK] >= 0:
        _release(a, meta, desc[e, BLK], desc[e, CLS])
    desc[e, BLK] = blk
    desc[e, CLS] = cls
    desc[e, HEAD] = 0
    return True


@njit(cache=True, nogil=True, inline="always")
def _fit(desc, e, n):  # type: ignore[no-untyped-def]
    """The class to move a table of ``n`` entries to when its block is at most 1/4 used, else -1."""
    cls = desc[e, CLS]
    if desc[e, BLK] < 0 or cls == 0 or n * 4 > CAPS[cls]:
        return -1
    return _class_for(max(1, 2 * n))


@njit(cache=True, nogil=True, inline="always")
def _room_for_one(desc, e, n, a, b, meta):  # type: ignore[no-untyped-def]
    """Make a pair table of ``n`` entries fit one more: move up a class when full, down when mostly empty.
    Returns -1, or the capacity the pool lacks for the move up (nothing changed then)."""
    if desc[e, BLK] < 0 or n == CAPS[desc[e, CLS]]:
        cls = 0 if desc[e, BLK] < 0 else desc[e, CLS] + 1
        if not _move_pairs(desc, e, cls, a, b, meta):
            return CAPS[cls]
    else:
        cls = _fit(desc, e, n + 1)
        if cls >= 0:
            _move_pairs(desc, e, cls, a, b, meta)
    return -1


# --- tiles ----------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _first_after(desc, p_k, e, x):  # type: ignore[no-untyped-def]
    """Logical index of entity ``e``'s first tile with id > ``x`` (tiles are sorted)."""
    lo = 0
    hi = desc[e, LEN]
    while lo < hi:
        mid = (lo + hi) >> 1
        if p_k[_phys(desc, e, mid)] > x:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True, nogil=True, inline="always")
def _reset_window(r_cnt, r_sum, r_err, r_min, r_max, e, j):  # type: ignore[no-untyped-def]
    r_cnt[e, j] = 0
    for c in range(r_sum.shape[2]):
        r_sum[e, j, c] = 0.0
        r_err[e, j, c] = 0.0
    for c in range(r_min.shape[2]):
        r_min[e, j, c] = np.inf
    for c in range(r_max.shape[2]):
        r_max[e, j, c] = -np.inf


@njit(cache=True, nogil=True, inline="always")
def _add_sum(r_sum, r_err, e, j, c, x):  # type: ignore[no-untyped-def]
    """Compensated ``r_sum += x`` (Neumaier's summation): the low-order part the addition rounds away goes to ``r_err``
    (see the module doc on sums)."""
    s = r_sum[e, j, c]
    t = s + x
    z = t - s  # Knuth's TwoSum: branch-free, exact whatever the magnitudes
    r_err[e, j, c] += (s - (t - z)) + (x - z)
    r_sum[e, j, c] = t


@njit(cache=True, nogil=True, inline="always")
def _advance(e, k_new, n_tiles, windows, ent, tiles, t_meta):  # type: ignore[no-untyped-def]
    """Move entity ``e``'s newest tile to ``k_new``: expire what leaves each window, pop what leaves the ring."""
    cur_k, r_cnt, r_sum, r_min, r_max, t_desc, r_err = ent[0], ent[6], ent[7], ent[8], ent[9], ent[10], ent[13]
    p_k, p_cnt, p_sum, p_min, p_max = tiles
    k_old = cur_k[e]
    n = t_desc[e, LEN]
    if k_old >= 0 and n > 0:
        oldest = p_k[_phys(t_desc, e, 0)]
        for j in range(windows.shape[0]):
            if r_cnt[e, j] == 0:
                continue  # empty: nothing leaves (an empty window is always in its reset state)
            w = windows[j]
            if k_new - k_old >= w:
                _reset_window(r_cnt, r_sum, r_err, r_min, r_max, e, j)
                continue
            last_out = k_new - w  # tiles up to this id leave window j
            if oldest > last_out:
                continue
            q = _first_after(t_desc, p_k, e, k_old - w)
            rescan = False
            while q < n:
                s = _phys(t_desc, e, q)
                if p_k[s] > last_out:
                    break
                r_cnt[e, j] -= p_cnt[s]
                for c in range(r_sum.shape[2]):
                    _add_sum(r_sum, r_err, e, j, c, -p_sum[s, c])
                for c in range(r_min.shape[2]):
                    if p_min[s, c] <= r_min[e, j, c]:
                        rescan = True
                for c in range(r_max.shape[2]):
                    if p_max[s, c] >= r_max[e, j, c]:
                        rescan = True
                q += 1
            if r_cnt[e, j] == 0:
                _reset_window(r_cnt, r_sum, r_err, r_min, r_max, e, j)
            elif rescan:
                for c in range(r_min.shape[2]):
                    r_min[e, j, c] = np.inf
                for c in range(r_max.shape[2]):
                    r_max[e, j, c] = -np.inf
                for qq in range(q, n):  # the tiles still inside the window
                    s = _phys(t_desc, e, qq)
                    for c in range(r_min.shape[2]):
                        r_min[e, j, c] = min(r_min[e, j, c], p_min[s, c])
                    for c in range(r_max.shape[2]):
                        r_max[e, j, c] = max(r_max[e, j, c], p_max[s, c])
    cur_k[e] = k_new
    # Tiles that left the ring (they left every window above too).
    cap = CAPS[t_desc[e, CLS]]
    while n > 0 and p_k[_phys(t_desc, e, 0)] <= k_new - n_tiles:
        t_desc[e, HEAD] = t_desc[e, HEAD] + 1 if t_desc[e, HEAD] + 1 < cap else 0
        n -= 1
    t_desc[e, LEN] = n
    if n == 0:
        _free_table(p_k, t_meta, t_desc, e)
    else:
        cls = _fit(t_desc, e, n)
        if cls >= 0:
            _move_tiles(t_desc, e, cls, tiles, t_meta)  # shrinking is optional: no room, no move


@njit(cache=True, nogil=True, inline="always")
def _find_pair(desc, a, e, x):  # type: ignore[no-untyped-def]
    """Pool index of ``x`` in entity ``e``'s (unordered, head 0) table, or -1."""
    blk = desc[e, BLK]
    for q in range(desc[e, LEN]):
        if a[blk + q] == x:
            return blk + q
    return -1


@njit(cache=True, nogil=True, inline="always")
def _apply_one(i, e, t, values, dv, cfg, ent, tiles, t_meta, dpool, need):  # type: ignore[no-untyped-def]
    """Apply event ``i`` (entity row ``e``, time ``t``, distinct value hash ``dv``); returns its status.

    Everything that may stop for space (a larger tile block, distinct table room) happens before the event
    changes anything but what a rerun redoes identically (advancing, popping, compacting)."""
    slide_ms, n_tiles, windows, horizon = cfg
    cur_k, max_t, prev_t, dirty, r_cnt, r_sum, r_min, r_max, t_desc, d_desc, r_err = (
        ent[0], ent[1], ent[2], ent[5], ent[6], ent[7], ent[8], ent[9], ent[10], ent[11], ent[13],
    )  # fmt: skip
    p_k, p_cnt, p_sum, p_min, p_max = tiles
    d_val, d_last, d_meta = dpool
    k = t // slide_ms
    ck = cur_k[e]
    if ck >= 0 and k <= ck - n_tiles:
        return DROPPED_OLD
    if ck < 0 or k > ck:
        _advance(e, k, n_tiles, windows, ent, tiles, t_meta)
        ck = k
    n = t_desc[e, LEN]
    if n == 0 or p_k[_phys(t_desc, e, n - 1)] < k:
        pos = n
        found = False
    else:
        pos = _first_after(t_desc, p_k, e, k - 1)
        found = pos < n and p_k[_phys(t_desc, e, pos)] == k
    if not found and (t_desc[e, BLK] < 0 or n == CAPS[t_desc[e, CLS]]):
        cls = 0 if t_desc[e, BLK] < 0 else t_desc[e, CLS] + 1
        if not _move_tiles(t_desc, e, cls, tiles, t_meta):
            need[0] = POOL_TILES
            need[1] = CAPS[cls]
            return NEED_SPACE
    use_d = horizon > 0 and dv >= 0 and k > ck - horizon
    dq = -1
    if use_d:
        dq = _find_pair(d_desc, d_val, e, dv)
        nd = d_desc[e, LEN]
        if dq < 0 and (d_desc[e, BLK] < 0 or nd == CAPS[d_desc[e, CLS]]):
            if d_desc[e, BLK] >= 0:
                # Full: drop values last seen before the longest distinct window first.
                blk = d_desc[e, BLK]
                keep = 0
                for q in range(nd):
                    if d_last[blk + q] > ck - horizon:
                        d_val[blk + keep] = d_val[blk + q]
                        d_last[blk + keep] = d_last[blk + q]
                        keep += 1
                nd = d_desc[e, LEN] = keep
            lacking = _room_for_one(d_desc, e, nd, d_val, d_last, d_meta)
            if lacking >= 0:
                need[0] = POOL_DISTINCT
                need[1] = lacking
                return NEED_SPACE
    # From here on nothing can fail.
    if not found:
        for q in range(n, pos, -1):
            _copy_tile(tiles, _phys(t_desc, e, q - 1), tiles, _phys(t_desc, e, q))
        t_desc[e, LEN] = n + 1
        s = _phys(t_desc, e, pos)
        p_k[s] = k
        p_cnt[s] = 0
        for c in range(p_sum.shape[1]):
            p_sum[s, c] = 0.0
        for c in range(p_min.shape[1]):
            p_min[s, c] = np.inf
        for c in range(p_max.shape[1]):
            p_max[s, c] = -np.inf
    s = _phys(t_desc, e, pos)
    p_cnt[s] += 1
    for c in range(p_sum.shape[1]):
        x = values[i, c]
        old = p_sum[s, c]
        new = old + x
        p_sum[s, c] = new
        # The windows follow the tile's rounded sum, not the event's value: what they subtract when the tile
        # leaves is then exactly what they added (module doc on sums). ``new - old`` is exact when ``old`` is 0
        # or ``|old| >= |x|`` (Fast2Sum): one compensated add; otherwise add ``new`` and take ``old`` away.
        exact = old == 0.0 or abs(old) >= abs(x)
        for j in range(windows.shape[0]):
            if k > ck - windows[j]:
                if exact:
                    _add_sum(r_sum, r_err, e, j, c, new - old)
                else:
                    _add_sum(r_sum, r_err, e, j, c, new)
                    _add_sum(r_sum, r_err, e, j, c, -old)
    for c in range(p_min.shape[1]):
        p_min[s, c] = min(p_min[s, c], values[i, c])
    for c in range(p_max.shape[1]):
        p_max[s, c] = max(p_max[s, c], values[i, c])
    for j in range(windows.shape[0]):
        if k > ck - windows[j]:
            r_cnt[e, j] += 1
            for c in range(r_min.shape[2]):
                r_min[e, j, c] = min(r_min[e, j, c], values[i, c])
            for c in range(r_max.shape[2]):
                r_max[e, j, c] = max(r_max[e, j, c], values[i, c])
    if use_d:
        if dq >= 0:
            d_last[dq] = max(d_last[dq], k)
        else:
            q = d_desc[e, BLK] + d_desc[e, LEN]
            d_val[q] = dv
            d_last[q] = k
            d_desc[e, LEN] += 1
    if t > max_t[e]:
        prev_t[e] = max_t[e]
        max_t[e] = t
    elif t > prev_t[e]:
        prev_t[e] = t
    dirty[e] = 1
    return APPLIED


@njit(cache=True, nogil=True)
def apply_events(start, rows, times, values, distinct, offsets, cfg, ent, tiles, t_meta, dpool, status, need):  # type: ignore[no-untyped-def]
    """Apply events ``start..`` in order; returns the index to resume from (``len`` when done).

    ``rows[i]`` is the entity row, ``times[i]`` epoch ms, ``values[i, c]`` the numeric columns,
    ``distinct[i]`` the hash of the distinct column's value (-1 if none), ``offsets[i]`` the event's source
    offset (an empty array when not tracked). ``status[i]`` receives APPLIED or DROPPED_OLD. Stops early,
    without applying event ``i``, when a pool is full (``need`` = pool, slots).
    """
    applied = ent[4]
    track = offsets.shape[0] > 0
    for i in range(start, rows.shape[0]):
        e = rows[i]
        code = _apply_one(i, e, times[i], values, distinct[i], cfg, ent, tiles, t_meta, dpool, need)
        if code == NEED_SPACE:
            return i
        status[i] = code
        if track and code == APPLIED and offsets[i] > applied[e]:
            applied[e] = offsets[i]
    return rows.shape[0]


@njit(cache=True, nogil=True, inline="always")
def _read_one(i, e, rcfg, ent, dpool, out):  # type: ignore[no-untyped-def]
    kinds, cols, wins, dwins, slide_ms, n_tiles = rcfg
    cur_k, max_t, prev_t, r_cnt, r_sum, r_min, r_max, d_desc, r_err = (
        ent[0], ent[1], ent[2], ent[6], ent[7], ent[8], ent[9], ent[11], ent[13],
    )  # fmt: skip
    d_last = dpool[1]
    for f in range(kinds.shape[0]):
        kind = kinds[f]
        j = wins[f]
        c = cols[f]
        if kind == F_COUNT:
            out[i, f] = r_cnt[e, j]
        elif kind == F_SUM:
            out[i, f] = r_sum[e, j, c] + r_err[e, j, c] if r_cnt[e, j] > 0 else 0.0
        elif kind == F_MEAN:
            out[i, f] = (r_sum[e, j, c] + r_err[e, j, c]) / r_cnt[e, j] if r_cnt[e, j] > 0 else np.nan
        elif kind == F_MIN:
            out[i, f] = r_min[e, j, c] if r_cnt[e, j] > 0 else np.nan
        elif kind == F_MAX:
            out[i, f] = r_max[e, j, c] if r_cnt[e, j] > 0 else np.nan
        elif kind == F_DISTINCT:
            lo = cur_k[e] - dwins[j]
            blk = d_desc[e, BLK]
            m = 0
            for q in range(d_desc[e, LEN]):
                if d_last[blk + q] > lo:
                    m += 1
            out[i, f] = m
        else:
            # Null unless the previous event's tile is still inside the ring (see the module doc).
            p = prev_t[e]
            inside = p != NO_TIME and p // slide_ms > max_t[e] // slide_ms - n_tiles
            out[i, f] = (max_t[e] - p) / 1000.0 if inside else np.nan


@njit(cache=True, nogil=True)
def read_features(rows, rcfg, ent, dpool, out):  # type: ignore[no-untyped-def]
    """Window values as of each entity's newest event, one output row per entry of ``rows``.

    ``rcfg = (kinds, cols, wins, dwins, slide_ms, n_tiles)`` describes each feature (function code, numeric
    column, window index) and the distinct windows in tiles. Nulls are NaN (callers map them to Feast nulls).
    """
    for i in range(rows.shape[0]):
        _read_one(i, rows[i], rcfg, ent, dpool, out)


@njit(cache=True, nogil=True)
def apply_and_read(start, rows, times, values, distinct, cfg, rcfg, ent, tiles, t_meta, dpool, status, out, need):  # type: ignore[no-untyped-def]
    """The backfill's loop: apply each event, then read its entity's windows as of that event into
    ``out[i]``. Events must be in event-time order per entity for the rows to be point-in-time values."""
    for i in range(start, rows.shape[0]):
        e = rows[i]
        code = _apply_one(i, e, times[i], values, distinct[i], cfg, ent, tiles, t_meta, dpool, need)
        if code == NEED_SPACE:
            return i
        status[i] = code
        _read_one(i, e, rcfg, ent, dpool, out)
    return rows.shape[0]


@njit(cache=True, nogil=True)
def gate_events(rows, times, seen_max, dirty, allowed_lag_ms, late):  # type: ignore[no-untyped-def]
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
                dirty[e] = 1


@njit(cache=True, nogil=True)
def dedup_events(start, rows, hashes, times, allowed_lag_ms, seen_max, dirty, q_desc, qpool, repeat, need):  # type: ignore[no-untyped-def]
    """Mark repeated event ids in arrival order; returns the index to resume from.

    Per entity, the (id hash, time) of the events recorded so far, oldest first. For each event: drop the
    entries older than the entity's watermark minus ``allowed_lag_ms`` (from the head, stopping at the
    first that is not), then it is a repeat if its hash is still there, else it is recorded. An id is kept
    while its event could still be accepted; a repeat of an older one is late anyway.
    """
    q_hash, q_time, q_meta = qpool
    for i in range(start, rows.shape[0]):
        e = rows[i]
        n = q_desc[e, LEN]
        if seen_max[e] != NO_TIME and n > 0:
            cutoff = seen_max[e] - allowed_lag_ms
            cap = CAPS[q_desc[e, CLS]]
            popped = 0
            while n > 0 and q_time[_phys(q_desc, e, 0)] < cutoff:
                q_desc[e, HEAD] = q_desc[e, HEAD] + 1 if q_desc[e, HEAD] + 1 < cap else 0
                n -= 1
                popped += 1
            if popped:
                q_desc[e, LEN] = n
                dirty[e] = 1
                if n == 0:
                    _free_table(q_hash, q_meta, q_desc, e)
        h = hashes[i]
        found = False
        for q in range(n):
            if q_hash[_phys(q_desc, e, q)] == h:
                found = True
                break
        repeat[i] = found
        if found:
            continue
        lacking = _room_for_one(q_desc, e, n, q_hash, q_time, q_meta)
        if lacking >= 0:
            need[0] = POOL_DEDUP
            need[1] = lacking
            return i
        s = _phys(q_desc, e, n)
        q_hash[s] = h
        q_time[s] = times[i]
        q_desc[e, LEN] = n + 1
        dirty[e] = 1
    return rows.shape[0]


# --- whole rows: clear, rebuild pools, pack, restore ------------------------------------------------------


@njit(cache=True, nogil=True)
def _clear_row(e, ent, t_link, t_meta, dpool, qpool):  # type: ignore[no-untyped-def]
    cur_k, max_t, prev_t, seen_max, applied, dirty, r_cnt, r_sum, r_min, r_max, t_desc, d_desc, q_desc, r_err = ent
    cur_k[e] = -1
    max_t[e] = NO_TIME
    prev_t[e] = NO_TIME
    seen_max[e] = NO_TIME
    applied[e] = -1
    dirty[e] = 0
    for j in range(r_cnt.shape[1]):
        _reset_window(r_cnt, r_sum, r_err, r_min, r_max, e, j)
    _free_table(t_link, t_meta, t_desc, e)
    _free_table(dpool[0], dpool[2], d_desc, e)
    _free_table(qpool[0], qpool[2], q_desc, e)


@njit(cache=True, nogil=True)
def clear_rows(rows, ent, t_link, t_meta, dpool, qpool):  # type: ignore[no-untyped-def]
    """Reset rows to empty and give their blocks back to the pools."""
    for i in range(rows.shape[0]):
        _clear_row(rows[i], ent, t_link, t_meta, dpool, qpool)


@njit(cache=True, nogil=True)
def rebuild_tiles(desc, tiles, new_tiles, new_meta):  # type: ignore[no-untyped-def]
    """Copy every entity's tiles into the (larger or smaller) new pool arrays, contiguously, deques
    linearised and blocks that are at most 1/4 used shrunk; ``new_meta`` is reset to match."""
    top = 0
    for e in range(desc.shape[0]):
        if desc[e, BLK] < 0:
            continue
        n = desc[e, LEN]
        cls = _fit(desc, e, n)
        if cls < 0:
            cls = desc[e, CLS]
        for i in range(n):
            _copy_tile(tiles, _phys(desc, e, i), new_tiles, top + i)
        desc[e, BLK] = top
        desc[e, CLS] = cls
        desc[e, HEAD] = 0
        top += CAPS[cls]
    new_meta[TOP] = top
    new_meta[USED] = top
    new_meta[FREE:] = -1


@njit(cache=True, nogil=True)
def rebuild_pairs(desc, a, b, new_a, new_b, new_meta):  # type: ignore[no-untyped-def]
    """:func:`rebuild_tiles` for a pool of (a, b) pairs."""
    top = 0
    for e in range(desc.shape[0]):
        if desc[e, BLK] < 0:
            continue
        n = desc[e, LEN]
        cls = _fit(desc, e, n)
        if cls < 0:
            cls = desc[e, CLS]
        for i in range(n):
            s = _phys(desc, e, i)
            new_a[top + i] = a[s]
            new_b[top + i] = b[s]
        desc[e, BLK] = top
        desc[e, CLS] = cls
        desc[e, HEAD] = 0
        top += CAPS[cls]
    new_meta[TOP] = top
    new_meta[USED] = top
    new_meta[FREE:] = -1


@njit(cache=True, nogil=True)
def _live_distinct(e, horizon, ent, d_last):  # type: ignore[no-untyped-def]
    d_desc = ent[11]
    blk = ent[11][e, BLK]
    m = 0
    for q in range(d_desc[e, LEN]):
        if d_last[blk + q] > ent[0][e] - horizon:
            m += 1
    return m


@njit(cache=True, nogil=True)
def pack_sizes(rows, horizon, ent, d_last, sizes):  # type: ignore[no-untyped-def]
    """Words of each row's packed form (see the module doc)."""
    r_cnt, r_sum, r_min, r_max, t_desc, q_desc = ent[6], ent[7], ent[8], ent[9], ent[10], ent[12]
    n_j = r_cnt.shape[1]
    agg = r_sum.shape[2] + r_min.shape[2] + r_max.shape[2]
    for i in range(rows.shape[0]):
        e = rows[i]
        sizes[i] = (
            HEAD_WORDS + n_j * (1 + agg) + t_desc[e, LEN] * (2 + agg) + 2 * _live_distinct(e, horizon, ent, d_last)
            + 2 * q_desc[e, LEN]
        )  # fmt: skip


@njit(cache=True, nogil=True)
def pack_rows(rows, offsets, layout, fingerprint, horizon, ent, tiles, dpool, qpool, buf, fbuf):  # type: ignore[no-untyped-def]
    """Write row ``rows[i]`` at ``buf[offsets[i]:offsets[i + 1]]``; ``fbuf`` is ``buf`` viewed as float64."""
    cur_k, max_t, prev_t, seen_max, applied, _, r_cnt, r_sum, r_min, r_max, t_desc, d_desc, q_desc, r_err = ent
    p_k, p_cnt, p_sum, p_min, p_max = tiles
    d_val, d_last = dpool[0], dpool[1]
    q_hash, q_time = qpool[0], qpool[1]
    for i in range(rows.shape[0]):
        e = rows[i]
        w = offsets[i]
        n_t = t_desc[e, LEN]
        n_d = _live_distinct(e, horizon, ent, d_last)
        n_q = q_desc[e, LEN]
        if n_t >= 1 << COUNT_BITS[0] or n_d >= 1 << COUNT_BITS[1] or n_q >= 1 << COUNT_BITS[2]:
            raise ValueError("an entity's tables are too large to pack")
        buf[w] = layout
        buf[w + 1] = fingerprint
        buf[w + 2] = n_t | (n_d << COUNT_BITS[0]) | (n_q << (COUNT_BITS[0] + COUNT_BITS[1]))
        buf[w + 3] = cur_k[e]
        buf[w + 4] = max_t[e]
        buf[w + 5] = prev_t[e]
        buf[w + 6] = seen_max[e]
        buf[w + 7] = applied[e]
        w += HEAD_WORDS
        for j in range(r_cnt.shape[1]):
            buf[w] = r_cnt[e, j]
            w += 1
            for c in range(r_sum.shape[2]):
                fbuf[w] = r_sum[e, j, c] + r_err[e, j, c]
                w += 1
            for c in range(r_min.shape[2]):
                fbuf[w] = r_min[e, j, c]
                w += 1
            for c in range(r_max.shape[2]):
                fbuf[w] = r_max[e, j, c]
                w += 1
        for q in range(n_t):
            s = _phys(t_desc, e, q)
            buf[w] = p_k[s]
            buf[w + 1] = p_cnt[s]
            w += 2
            for c in range(p_sum.shape[1]):
                fbuf[w] = p_sum[s, c]
                w += 1
            for c in range(p_min.shape[1]):
                fbuf[w] = p_min[s, c]
                w += 1
            for c in range(p_max.shape[1]):
                fbuf[w] = p_max[s, c]
                w += 1
        # Live distinct entries sorted by value: the table's order depends on its history (a value that
        # expired but was not compacted away yet keeps its place when seen again), the blob does not.
        blk = d_desc[e, BLK]
        live = np.empty(n_d, np.int64)
        m = 0
        for q in range(d_desc[e, LEN]):
            if d_last[blk + q] > cur_k[e] - horizon:
                live[m] = blk + q
                m += 1
        for q in live[np.argsort(d_val[live])]:
            buf[w] = d_val[q]
            buf[w + 1] = d_last[q]
            w += 2
        for q in range(n_q):
            s = _phys(q_desc, e, q)
            buf[w] = q_hash[s]
            buf[w + 1] = q_time[s]
            w += 2


@njit(cache=True, nogil=True)
def restore_rows(start, rows, offsets, ent, tiles, t_meta, dpool, qpool, buf, fbuf, need):  # type: ignore[no-untyped-def]
    """Overwrite row ``rows[i]`` from ``buf[offsets[i]:]`` (validated by the caller), for ``i >= start``;
    returns the index to resume from after growing the pool ``need`` names."""
    cur_k, max_t, prev_t, seen_max, applied, _, r_cnt, r_sum, r_min, r_max, t_desc, d_desc, q_desc, r_err = ent
    p_k, p_cnt, p_sum, p_min, p_max = tiles
    d_val, d_last, d_meta = dpool
    q_hash, q_time, q_meta = qpool
    mask_t = (1 << COUNT_BITS[0]) - 1
    mask_d = (1 << COUNT_BITS[1]) - 1
    for i in range(start, rows.shape[0]):
        e = rows[i]
        _clear_row(e, ent, p_k, t_meta, dpool, qpool)
        w = offsets[i]
        counts = buf[w + 2]
        n_t = counts & mask_t
        n_d = (counts >> COUNT_BITS[0]) & mask_d
        n_q = counts >> (COUNT_BITS[0] + COUNT_BITS[1])
        if n_t:
            cls = _class_for(n_t)
            if not _move_tiles(t_desc, e, cls, tiles, t_meta):
                need[0] = POOL_TILES
                need[1] = CAPS[cls]
                return i
        if n_d:
            cls = _class_for(n_d)
            if not _move_pairs(d_desc, e, cls, d_val, d_last, d_meta):
                need[0] = POOL_DISTINCT
                need[1] = CAPS[cls]
                return i
        if n_q:
            cls = _class_for(n_q)
            if not _move_pairs(q_desc, e, cls, q_hash, q_time, q_meta):
                need[0] = POOL_DEDUP
                need[1] = CAPS[cls]
                return i
        cur_k[e] = buf[w + 3]
        max_t[e] = buf[w + 4]
        prev_t[e] = buf[w + 5]
        seen_max[e] = buf[w + 6]
        applied[e] = buf[w + 7]
        w += HEAD_WORDS
        for j in range(r_cnt.shape[1]):
            r_cnt[e, j] = buf[w]
            w += 1
            for c in range(r_sum.shape[2]):
                r_sum[e, j, c] = fbuf[w]
                w += 1
            for c in range(r_min.shape[2]):
                r_min[e, j, c] = fbuf[w]
                w += 1
            for c in range(r_max.shape[2]):
                r_max[e, j, c] = fbuf[w]
                w += 1
        blk = t_desc[e, BLK]
        for q in range(n_t):
            p_k[blk + q] = buf[w]
            p_cnt[blk + q] = buf[w + 1]
            w += 2
            for c in range(p_sum.shape[1]):
                p_sum[blk + q, c] = fbuf[w]
                w += 1
            for c in range(p_min.shape[1]):
                p_min[blk + q, c] = fbuf[w]
                w += 1
            for c in range(p_max.shape[1]):
                p_max[blk + q, c] = fbuf[w]
                w += 1
        t_desc[e, LEN] = n_t
        # Each window's sum again from its tiles, compensated: the packed value is rounded, and a huge tile
        # leaving later would leave that rounding behind. A window holds the newest tiles whose counts add
        # up to its count.
        for j in range(r_cnt.shape[1]):
            for c in range(r_sum.shape[2]):
                r_sum[e, j, c] = r_err[e, j, c] = 0.0
            left = r_cnt[e, j]
            q = n_t - 1
            while left > 0 and q >= 0:
                left -= p_cnt[blk + q]
                for c in range(r_sum.shape[2]):
                    _add_sum(r_sum, r_err, e, j, c, p_sum[blk + q, c])
                q -= 1
        blk = d_desc[e, BLK]
        for q in range(n_d):
            d_val[blk + q] = buf[w]
            d_last[blk + q] = buf[w + 1]
            w += 2
        d_desc[e, LEN] = n_d
        blk = q_desc[e, BLK]
        for q in range(n_q):
            q_hash[blk + q] = buf[w]
            q_time[blk + q] = buf[w + 1]
            w += 2
        q_desc[e, LEN] = n_q
    return rows.shape[0]
