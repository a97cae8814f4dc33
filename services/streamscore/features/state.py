"""Per-view window state: numpy arrays the kernels update, plus the maps from entity ids to rows.

Memory follows the events, not the window length. Each entity keeps a fixed part (times, source offset,
one running aggregate per window, three table descriptors: ~160 bytes with one column and three windows)
and, in pools shared by the view, only its *non-empty* tiles inside the ring, its distinct values of the
longest distinct window and its recent event ids (see :mod:`streamscore.features.kernels` for the layout
and why). 20,000 users with ~11 events a day on the production user view take ~830 bytes each, growth
slack included, where a dense ring of 1,440 one-minute tiles took ~58 KB.

The state of one entity packs into one compact blob (:meth:`ViewState.pack`, :meth:`ViewState.take_dirty`)
that :meth:`ViewState.restore` turns back into exactly the same state, so a changelog of changed entities
is a recovery point. Entities idle past a cutoff are dropped (:meth:`ViewState.evict`), and the arrays are
rebuilt smaller when few remain, so memory is really returned: row numbers are only valid until the next
``evict`` or ``remove``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from streamscore.features import kernels
from streamscore.features.plan import ViewPlan

__all__ = ["ViewState"]

_CODES = {"count": 0, "sum": 1, "mean": 2, "min": 3, "max": 4, "count_distinct": 5, "seconds_since_previous": 6}
FORMAT_VERSION = 1
_MAGIC = 0x5353  # "SS"
_MIN_POOL = 64  # slots: smaller pools are never worth a rebuild

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
Bools = npt.NDArray[np.bool_]


class ViewState:
    """The tiles, running windows, distinct values and recent event ids of every entity of one view.

    ``capacity`` is the initial number of entity rows and ``distinct_capacity`` the initial pool slots per
    row; both grow as needed.
    """

    # Per entity row (see :mod:`~streamscore.features.kernels`); callers read max_t, seen_max and applied.
    cur_k: I64
    max_t: I64
    prev_t: I64
    seen_max: I64
    applied: I64
    dirty: npt.NDArray[np.uint8]
    r_cnt: I64
    r_sum: F64
    r_err: F64  # the compensation of each r_sum (Neumaier): the value is r_sum + r_err
    r_min: F64
    r_max: F64
    t_desc: I32
    d_desc: I32
    q_desc: I32
    # Pools: tiles, distinct values, event ids; each with its meta words (top, used, free lists).
    p_k: I64
    p_cnt: I32
    p_sum: F64
    p_min: F64
    p_max: F64
    t_meta: I64
    d_val: I64
    d_last: I64
    d_meta: I64
    q_hash: I64
    q_time: I64
    q_meta: I64

    def __init__(self, plan: ViewPlan, *, capacity: int = 1024, distinct_capacity: int = 8) -> None:
        self.plan = plan
        self.windows = np.array([w // plan.slide_ms for w in plan.windows_ms], dtype=np.int64)
        self.dwindows = np.array([w // plan.slide_ms for w in plan.distinct_windows_ms], dtype=np.int64)
        self.distinct_horizon = int(self.dwindows.max()) if self.dwindows.size else 0
        self.kinds = np.array([_CODES[f.function] for f in plan.features], dtype=np.int64)
        self.cols = np.array(
            [plan.numeric_columns.index(f.column) if f.column in plan.numeric_columns else 0 for f in plan.features],
            dtype=np.int64,
        )
        self.wins = np.array([self._window_index(f.function, f.window_ms) for f in plan.features], dtype=np.int64)
        functions = {f.function for f in plan.features}
        n_cols = len(plan.numeric_columns)
        # Only the aggregates a feature reads are kept (0 columns otherwise).
        self._n_sum = n_cols if functions & {"sum", "mean"} else 0
        self._n_min = n_cols if "min" in functions else 0
        self._n_max = n_cols if "max" in functions else 0
        mask = int(self._n_sum > 0) | int(self._n_min > 0) << 1 | int(self._n_max > 0) << 2
        self._layout = (
            _MAGIC << 48
            | FORMAT_VERSION << 40
            | mask << 32
            | min(n_cols, 0xFFFF) << 16
            | min(len(self.windows), 0xFFFF)
        )
        shape = f"{plan.slide_ms}/{plan.n_tiles}/{plan.windows_ms}/{plan.distinct_windows_ms}"
        self._fingerprint = zlib.crc32(shape.encode())
        self._cfg = (plan.slide_ms, plan.n_tiles, self.windows, self.distinct_horizon)
        self._rcfg = (self.kinds, self.cols, self.wins, self.dwindows, plan.slide_ms, plan.n_tiles)
        self._min_capacity = max(1, capacity)
        self._slots = max(1, distinct_capacity)
        self._need = np.zeros(2, np.int64)
        self.rows: dict[str, int] = {}
        self.ids: list[str | None] = []
        self.free: list[int] = []
        self._alloc_rows(self._min_capacity)
        self._alloc_pools(
            self._min_capacity * self._slots, self._min_capacity * self._slots if self.distinct_horizon else 0, 0
        )

    def _window_index(self, function: str, window_ms: int) -> int:
        if function == "count_distinct":
            return self.plan.distinct_windows_ms.index(window_ms)
        if function == "seconds_since_previous":
            return 0
        return self.plan.windows_ms.index(window_ms)

    # --- arrays -------------------------------------------------------------------------------------------

    def _row_fields(self) -> list[tuple[str, tuple[int, ...], Any, Any]]:
        """(name, shape after the row axis, dtype, empty value) of every per-entity array."""
        j = len(self.windows)
        desc = np.array([-1, 0, 0, 0], np.int32)
        return [
            ("cur_k", (), np.int64, -1),
            ("max_t", (), np.int64, kernels.NO_TIME),
            ("prev_t", (), np.int64, kernels.NO_TIME),
            ("seen_max", (), np.int64, kernels.NO_TIME),
            ("applied", (), np.int64, -1),
            ("dirty", (), np.uint8, 0),
            ("r_cnt", (j,), np.int64, 0),
            ("r_sum", (j, self._n_sum), np.float64, 0.0),
            ("r_err", (j, self._n_sum), np.float64, 0.0),
            ("r_min", (j, self._n_min), np.float64, np.inf),
            ("r_max", (j, self._n_max), np.float64, -np.inf),
            ("t_desc", (4,), np.int32, desc),
            ("d_desc", (4,), np.int32, desc),
            ("q_desc", (4,), np.int32, desc),
        ]

    def _alloc_rows(self, entities: int) -> None:
        for name, shape, dtype, empty in self._row_fields():
            arr = np.empty((entities, *shape), dtype)
            arr[...] = empty
            setattr(self, name, arr)

    def _grow_rows(self, entities: int) -> None:
        old = {name: getattr(self, name) for name, *_ in self._row_fields()}
        self._alloc_rows(entities)
        for name, arr in old.items():
            getattr(self, name)[: len(arr)] = arr

    def _reset_rows(self) -> None:
        for name, _, _, empty in self._row_fields():
            getattr(self, name)[...] = empty

    @staticmethod
    def _meta() -> I64:
        meta = np.full(kernels.FREE + kernels.N_CLASSES, -1, np.int64)
        meta[kernels.TOP] = meta[kernels.USED] = 0
        return meta

    def _tile_arrays(self, size: int) -> tuple[I64, I32, F64, F64, F64]:
        """Uninitialised: a slot is written when its block is handed out."""
        return (
            np.empty(size, np.int64),
            np.empty(size, np.int32),
            np.empty((size, self._n_sum), np.float64),
            np.empty((size, self._n_min), np.float64),
            np.empty((size, self._n_max), np.float64),
        )

    def _alloc_pools(self, tiles: int, distinct: int, dedup: int) -> None:
        self.p_k, self.p_cnt, self.p_sum, self.p_min, self.p_max = self._tile_arrays(tiles)
        self.t_meta = self._meta()
        self.d_val, self.d_last, self.d_meta = np.empty(distinct, np.int64), np.empty(distinct, np.int64), self._meta()
        self.q_hash, self.q_time, self.q_meta = np.empty(dedup, np.int64), np.empty(dedup, np.int64), self._meta()

    def _reset_pools(self) -> None:
        for meta in (self.t_meta, self.d_meta, self.q_meta):
            meta[:] = self._meta()

    def _ent(self) -> tuple[Any, ...]:
        return (
            self.cur_k, self.max_t, self.prev_t, self.seen_max, self.applied, self.dirty, self.r_cnt, self.r_sum,
            self.r_min, self.r_max, self.t_desc, self.d_desc, self.q_desc, self.r_err,
        )  # fmt: skip

    def _tiles(self) -> tuple[Any, ...]:
        return (self.p_k, self.p_cnt, self.p_sum, self.p_min, self.p_max)

    def _dpool(self) -> tuple[I64, I64, I64]:
        return (self.d_val, self.d_last, self.d_meta)

    def _qpool(self) -> tuple[I64, I64, I64]:
        return (self.q_hash, self.q_time, self.q_meta)

    def _rebuild_pool(self, pool: int, extra: int = 0, *, compact: bool = False) -> None:
        """New arrays for a pool, with room for ``extra`` more slots and a quarter of the used ones again.
        Mostly free blocks (or ``compact``): the live blocks are copied together, so the pool may shrink;
        else the arrays are copied as they are (blocks and free lists stay valid), which is faster."""
        meta = (self.t_meta, self.d_meta, self.q_meta)[pool]
        top, used = int(meta[kernels.TOP]), int(meta[kernels.USED])
        if not compact and (top - used) * 4 <= top:
            size = max(_MIN_POOL, (top + extra) * 5 // 4)
            if pool == kernels.POOL_TILES:
                self.p_k, self.p_cnt, self.p_sum, self.p_min, self.p_max = (
                    _extended(a, top, size) for a in (self.p_k, self.p_cnt, self.p_sum, self.p_min, self.p_max)
                )
            elif pool == kernels.POOL_DISTINCT:
                self.d_val, self.d_last = (_extended(a, top, size) for a in (self.d_val, self.d_last))
            else:
                self.q_hash, self.q_time = (_extended(a, top, size) for a in (self.q_hash, self.q_time))
            return
        size = max(_MIN_POOL, (used + extra) * 5 // 4)
        new_meta = self._meta()
        if pool == kernels.POOL_TILES:
            tiles = self._tile_arrays(size)
            kernels.rebuild_tiles(self.t_desc, self._tiles(), tiles, new_meta)
            self.p_k, self.p_cnt, self.p_sum, self.p_min, self.p_max = tiles
            self.t_meta = new_meta
        elif pool == kernels.POOL_DISTINCT:
            a, b = np.empty(size, np.int64), np.empty(size, np.int64)
            kernels.rebuild_pairs(self.d_desc, self.d_val, self.d_last, a, b, new_meta)
            self.d_val, self.d_last, self.d_meta = a, b, new_meta
        else:
            a, b = np.empty(size, np.int64), np.empty(size, np.int64)
            kernels.rebuild_pairs(self.q_desc, self.q_hash, self.q_time, a, b, new_meta)
            self.q_hash, self.q_time, self.q_meta = a, b, new_meta

    def _resumable(self, n: int, run: Callable[[int], int]) -> None:
        """Run a kernel to the end, rebuilding the pool it stopped for (``self._need``) each time. ``run``
        reads the arrays through ``self`` each call, so it sees the new ones."""
        start = 0
        while start < n:
            start = run(start)
            if start < n:
                self._rebuild_pool(int(self._need[0]), int(self._need[1]))

    @property
    def capacity(self) -> int:
        return len(self.cur_k)

    @property
    def nbytes(self) -> int:
        """Bytes held by all numpy arrays of the view."""
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))

    def __len__(self) -> int:
        return len(self.rows)

    # --- rows ---------------------------------------------------------------------------------------------

    def entity_rows(self, ids: Sequence[str]) -> I64:
        """Rows for entity ids, adding the new ones (growing the arrays when full)."""
        rows = np.empty(len(ids), np.int64)
        get = self.rows.get
        for i, key in enumerate(ids):
            row = get(key)
            if row is None:
                row = self._new_row(key)
            rows[i] = row
        return rows

    def _new_row(self, key: str) -> int:
        if self.free:
            row = self.free.pop()
        else:
            row = len(self.ids)
            if row >= self.capacity:
                self._grow_rows(max(1, self.capacity * 2))
            self.ids.append(None)
        self.rows[key] = row
        self.ids[row] = key
        return row

    def ensure_rows(self, rows: int) -> None:
        """Capacity for ``rows`` rows addressed directly (the backfill's mode: no entity-id maps)."""
        if rows > self.capacity:
            self._grow_rows(max(rows, self.capacity * 2))

    def move_row(self, src: int, dst: int) -> None:
        """Make row ``src`` row ``dst`` and clear every other row (the backfill's carry-over; the id maps are
        not touched). The pools are emptied at once rather than block by block."""
        buf, offsets = self._pack_rows(np.array([src], np.int64))
        self._reset_rows()
        self._reset_pools()
        self._restore_rows(np.array([dst], np.int64), buf, offsets)

    def remove(self, ids: Sequence[str]) -> None:
        """Drop entities (unknown ids are ignored) and give their blocks back; rebuilds the arrays smaller
        when few entities remain (row numbers change then)."""
        rows = [self.rows.pop(key) for key in ids if key in self.rows]
        if not rows:
            return
        kernels.clear_rows(np.array(rows, np.int64), self._ent(), self.p_k, self.t_meta, self._dpool(), self._qpool())
        for row in rows:
            self.ids[row] = None
        self.free.extend(rows)
        self._maybe_compact()

    def evict(self, cutoff_ms: int) -> list[str]:
        """Remove the entities whose newest event is before ``cutoff_ms`` and that have no unsaved change
        (not dirty); returns their ids. Row numbers may change (see :meth:`remove`)."""
        used = len(self.ids)
        candidates = np.nonzero((self.max_t[:used] < cutoff_ms) & (self.dirty[:used] == 0))[0]
        ids = self.ids
        gone = [key for key in (ids[r] for r in candidates.tolist()) if key is not None]
        self.remove(gone)
        return gone

    def _maybe_compact(self) -> None:
        live = len(self.rows)
        if self.capacity > self._min_capacity and live * 4 < self.capacity:
            self._compact()
            return
        for pool, meta, size in (
            (kernels.POOL_TILES, self.t_meta, len(self.p_k)),
            (kernels.POOL_DISTINCT, self.d_meta, len(self.d_val)),
            (kernels.POOL_DEDUP, self.q_meta, len(self.q_hash)),
        ):
            if size > 4 * _MIN_POOL and meta[kernels.USED] * 4 < size:
                self._rebuild_pool(pool, compact=True)

    def _compact(self) -> None:
        """Rebuild everything for the live entities only: rows 0.. in id order, pools sized to fit."""
        keys = list(self.rows)
        old = np.array([self.rows[k] for k in keys], np.int64)
        dirty = self.dirty[old].copy()
        buf, offsets = self._pack_rows(old)
        capacity = max(self._min_capacity, 1 << max(0, (2 * len(keys) - 1).bit_length()))
        self._alloc_rows(capacity)
        used = [int(meta[kernels.USED]) for meta in (self.t_meta, self.d_meta, self.q_meta)]
        self._alloc_pools(*(max(_MIN_POOL, u * 5 // 4) if u else 0 for u in used))
        self.rows = {k: i for i, k in enumerate(keys)}
        self.ids = list(keys)
        self.free = []
        rows = np.arange(len(keys), dtype=np.int64)
        self._restore_rows(rows, buf, offsets)
        self.dirty[rows] = dirty

    # --- events -------------------------------------------------------------------------------------------

    @staticmethod
    def value_ids(values: Sequence[str] | np.ndarray) -> I64:
        """Stable 63-bit hashes of strings (the same in every process): distinct values and event ids."""
        # categorize=False: the same hashes, without factorizing first (which costs more than it saves for ids
        # that are mostly distinct, and ~0.1 ms per call even for a handful).
        hashed = pd.util.hash_array(np.asarray(values, dtype=object), categorize=False) >> np.uint64(1)
        return hashed.astype(np.int64)  # type: ignore[no-any-return]

    def gate(self, rows: I64, times: I64, allowed_lag_ms: int) -> Bools:
        """Late flags, in arrival order, against this view's per-entity watermarks."""
        late = np.zeros(len(rows), np.bool_)
        kernels.gate_events(rows, times, self.seen_max, self.dirty, allowed_lag_ms, late)
        return late

    def dedup(self, rows: I64, event_hashes: I64, times: I64, allowed_lag_ms: int) -> Bools:
        """True for events whose id was already seen (in arrival order): per entity, ids are remembered
        while their event could still pass the lateness gate, i.e. until the entity's watermark
        (``seen_max``, as it is now) moves more than ``allowed_lag_ms`` past them."""
        repeat = np.zeros(len(rows), np.bool_)
        self._resumable(
            len(rows),
            lambda start: kernels.dedup_events(
                start, rows, event_hashes, times, allowed_lag_ms, self.seen_max, self.dirty, self.q_desc,
                self._qpool(), repeat, self._need,
            ),
        )  # fmt: skip
        return repeat

    def apply(
        self, rows: I64, times: I64, values: F64, distinct: I64 | None = None, offsets: I64 | None = None
    ) -> npt.NDArray[np.int8]:
        """Apply events (any order); returns per-event status (kernels.APPLIED / DROPPED_OLD). With
        ``offsets``, each row's ``applied`` becomes the highest offset of its applied events."""
        status = np.zeros(len(rows), np.int8)
        d = self._distinct(distinct, len(rows))
        o = np.empty(0, np.int64) if offsets is None else np.asarray(offsets, np.int64)
        self._resumable(
            len(rows),
            lambda start: kernels.apply_events(
                start, rows, times, values, d, o, self._cfg, self._ent(), self._tiles(), self.t_meta,
                self._dpool(), status, self._need,
            ),
        )  # fmt: skip
        return status

    def apply_and_read(
        self, rows: I64, times: I64, values: F64, distinct: I64 | None = None
    ) -> tuple[F64, npt.NDArray[np.int8]]:
        """Apply events and return, for each, its entity's features right after it (the backfill's rows)."""
        status = np.zeros(len(rows), np.int8)
        out = np.empty((len(rows), len(self.kinds)), np.float64)
        d = self._distinct(distinct, len(rows))
        self._resumable(
            len(rows),
            lambda start: kernels.apply_and_read(
                start, rows, times, values, d, self._cfg, self._rcfg, self._ent(), self._tiles(), self.t_meta,
                self._dpool(), status, out, self._need,
            ),
        )  # fmt: skip
        return out, status

    @staticmethod
    def _distinct(distinct: I64 | None, n: int) -> I64:
        return np.full(n, -1, np.int64) if distinct is None else distinct

    def read(self, rows: I64) -> F64:
        """Feature values (columns in plan order) as of each row's newest event; NaN = null."""
        out = np.empty((len(rows), len(self.kinds)), np.float64)
        kernels.read_features(rows, self._rcfg, self._ent(), self._dpool(), out)
        return out

    # --- packed rows --------------------------------------------------------------------------------------

    def _pack_rows(self, rows: I64) -> tuple[I64, I64]:
        sizes = np.empty(len(rows), np.int64)
        kernels.pack_sizes(rows, self.distinct_horizon, self._ent(), self.d_last, sizes)
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        buf = np.empty(int(offsets[-1]), np.int64)
        kernels.pack_rows(
            rows, offsets, self._layout, self._fingerprint, self.distinct_horizon, self._ent(), self._tiles(),
            self._dpool(), self._qpool(), buf, buf.view(np.float64),
        )  # fmt: skip
        return buf, offsets

    def _restore_rows(self, rows: I64, buf: I64, offsets: I64) -> None:
        fbuf = buf.view(np.float64)
        self._resumable(
            len(rows),
            lambda start: kernels.restore_rows(
                start, rows, offsets, self._ent(), self._tiles(), self.t_meta, self._dpool(), self._qpool(), buf,
                fbuf, self._need,
            ),
        )  # fmt: skip

    def _blobs(self, rows: I64) -> list[bytes]:
        buf, offsets = self._pack_rows(rows)
        bounds = offsets.tolist()
        return [buf[bounds[i] : bounds[i + 1]].tobytes() for i in range(len(rows))]

    def pack(self, ids: Sequence[str]) -> list[bytes]:
        """The packed state of each of these (live) entities; see :mod:`~streamscore.features.kernels`."""
        return self._blobs(np.array([self.rows[key] for key in ids], np.int64))

    def take_dirty(self) -> tuple[list[str], list[bytes]]:
        """Ids and packed states of the entities changed since the last call; clears the flags."""
        used = len(self.ids)
        changed = np.nonzero(self.dirty[:used])[0]
        self.dirty[changed] = 0
        ids = self.ids
        keep = [(key, row) for key, row in ((ids[r], r) for r in changed.tolist()) if key is not None]
        return [k for k, _ in keep], self._blobs(np.array([r for _, r in keep], np.int64))

    def restore(self, ids: Sequence[str], blobs: Sequence[bytes]) -> None:
        """Create or overwrite entities from packed states (not dirty). Raises ValueError, before changing
        anything, on a blob of another layout: another format version, column count, window count,
        aggregates kept or plan windows."""
        if len(ids) != len(blobs):
            raise ValueError(f"{len(ids)} ids for {len(blobs)} blobs")
        lengths = np.fromiter((len(b) for b in blobs), np.int64, len(blobs))
        bad = np.nonzero((lengths % 8 != 0) | (lengths < 8 * kernels.HEAD_WORDS))[0]
        if bad.size:
            raise ValueError(f"{self.plan.name}: the packed state of {ids[int(bad[0])]!r} is truncated")
        buf = np.frombuffer(b"".join(blobs), np.int64).copy()
        offsets = np.zeros(len(blobs) + 1, np.int64)
        np.cumsum(lengths // 8, out=offsets[1:])
        heads = offsets[:-1]
        counts = buf[heads + 2] if len(blobs) else np.zeros(0, np.int64)
        bits = kernels.COUNT_BITS
        n_t = counts & ((1 << bits[0]) - 1)
        n_d = (counts >> bits[0]) & ((1 << bits[1]) - 1)
        n_q = counts >> (bits[0] + bits[1])
        agg = self._n_sum + self._n_min + self._n_max
        expected = kernels.HEAD_WORDS + len(self.windows) * (1 + agg) + n_t * (2 + agg) + 2 * n_d + 2 * n_q
        wrong = (buf[heads] != self._layout) | (buf[heads + 1] != self._fingerprint)
        for i in np.nonzero(wrong | (expected != lengths // 8))[0][:1].tolist():
            what = "of another layout or plan" if wrong[i] else "corrupt"
            raise ValueError(f"{self.plan.name}: the packed state of {ids[i]!r} is {what}")
        self._restore_rows(self.entity_rows(ids), buf, offsets)


def _extended(arr: npt.NDArray[Any], used: int, size: int) -> npt.NDArray[Any]:
    """A new array of ``size`` rows holding ``arr[:used]``, the rest uninitialised."""
    out = np.empty((size, *arr.shape[1:]), arr.dtype)
    out[:used] = arr[:used]
    return out
