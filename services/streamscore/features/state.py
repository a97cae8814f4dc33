"""Per-view window state: numpy arrays the kernels update, plus the maps from entity ids to rows.

Memory is dense in tiles: ``entities * n_tiles * (1 + 3 * columns) * 8`` bytes for the ring, e.g. 1,000
users * 1,440 one-minute tiles = 46 MB. Rows of entities idle for longer than the longest window are
recycled (:meth:`ViewState.evict_idle`), so memory follows the *active* entities of one window.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import lz4.frame
import numpy as np
import numpy.typing as npt

from streamscore.features import kernels
from streamscore.features.plan import ViewPlan

__all__ = ["ViewState"]

_CODES = {"count": 0, "sum": 1, "mean": 2, "min": 3, "max": 4, "count_distinct": 5, "seconds_since_previous": 6}
_ARRAYS = (
    "cur_k", "max_t", "prev_t", "tile_id", "t_cnt", "t_sum", "t_min", "t_max",
    "r_cnt", "r_sum", "r_min", "r_max", "d_val", "d_last", "d_n", "seen_max",
)  # fmt: skip

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


class ViewState:
    """The tiles and running windows of every entity of one view."""

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
        self.rows: dict[str, int] = {}
        self.ids: list[str | None] = []
        self.free: list[int] = []
        self.values: dict[str, int] = {}
        self._alloc(capacity, distinct_capacity if self.distinct_horizon else 1)

    def _window_index(self, function: str, window_ms: int) -> int:
        if function == "count_distinct":
            return self.plan.distinct_windows_ms.index(window_ms)
        if function == "seconds_since_previous":
            return 0
        return self.plan.windows_ms.index(window_ms)

    def _alloc(self, entities: int, distinct: int) -> None:
        n, c, j = self.plan.n_tiles, len(self.plan.numeric_columns), len(self.windows)
        self.cur_k = np.full(entities, -1, np.int64)
        self.max_t = np.full(entities, kernels.NO_TIME, np.int64)
        self.prev_t = np.full(entities, kernels.NO_TIME, np.int64)
        self.seen_max = np.full(entities, kernels.NO_TIME, np.int64)
        self.tile_id = np.full((entities, n), -1, np.int64)
        self.t_cnt = np.zeros((entities, n), np.int64)
        self.t_sum = np.zeros((entities, n, c), np.float64)
        self.t_min = np.full((entities, n, c), np.inf)
        self.t_max = np.full((entities, n, c), -np.inf)
        self.r_cnt = np.zeros((entities, j), np.int64)
        self.r_sum = np.zeros((entities, j, c), np.float64)
        self.r_min = np.full((entities, j, c), np.inf)
        self.r_max = np.full((entities, j, c), -np.inf)
        self.d_val = np.full((entities, distinct), -1, np.int64)
        self.d_last = np.full((entities, distinct), -1, np.int64)
        self.d_n = np.zeros(entities, np.int64)

    def _grow(self, entities: int | None = None, distinct: int | None = None) -> None:
        old = {name: getattr(self, name) for name in _ARRAYS}
        self._alloc(entities or len(self.cur_k), distinct or self.d_val.shape[1])
        for name, arr in old.items():
            new = getattr(self, name)
            index = tuple(slice(0, s) for s in arr.shape)
            new[index] = arr

    @property
    def capacity(self) -> int:
        return len(self.cur_k)

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
                self._grow(entities=max(1, self.capacity * 2))
            self.ids.append(None)
        self.rows[key] = row
        self.ids[row] = key
        return row

    def ensure_rows(self, rows: int) -> None:
        """Capacity for ``rows`` rows addressed directly (the backfill's mode: no entity-id maps)."""
        if rows > self.capacity:
            self._grow(entities=max(rows, self.capacity * 2))

    def move_row(self, src: int, dst: int) -> None:
        """Copy row ``src`` to ``dst`` and clear every other row in use (the backfill's carry-over)."""
        saved = {name: getattr(self, name)[src].copy() for name in _ARRAYS}
        self._reset_row(slice(0, max(src, dst) + 1))
        for name, value in saved.items():
            getattr(self, name)[dst] = value

    def value_ids(self, values: Sequence[str]) -> I64:
        out = np.empty(len(values), np.int64)
        table = self.values
        for i, v in enumerate(values):
            vid = table.get(v)
            if vid is None:
                vid = table[v] = len(table)
            out[i] = vid
        return out

    def gate(self, rows: I64, times: I64, allowed_lag_ms: int) -> npt.NDArray[np.bool_]:
        """Late flags, in arrival order, against this view's per-entity watermarks."""
        late = np.zeros(len(rows), np.bool_)
        kernels.gate_events(rows, times, self.seen_max, allowed_lag_ms, late)
        return late

    def apply(self, rows: I64, times: I64, values: F64, distinct: I64 | None = None) -> npt.NDArray[np.int8]:
        """Apply events (any order); returns per-event status (kernels.APPLIED / DROPPED_OLD)."""
        status = np.zeros(len(rows), np.int8)
        d = self._distinct(distinct, len(rows))
        self._resumable(
            len(rows),
            lambda start: kernels.apply_events(
                start, rows, times, values, d, self.plan.slide_ms, self.windows, self.distinct_horizon,
                self.cur_k, self.max_t, self.prev_t, self.tile_id, self.t_cnt, self.t_sum, self.t_min, self.t_max,
                self.r_cnt, self.r_sum, self.r_min, self.r_max, self.d_val, self.d_last, self.d_n, status,
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
                start, rows, times, values, d, self.plan.slide_ms, self.windows, self.distinct_horizon,
                self.kinds, self.cols, self.wins, self.dwindows, self.cur_k, self.max_t, self.prev_t, self.tile_id,
                self.t_cnt, self.t_sum, self.t_min, self.t_max, self.r_cnt, self.r_sum, self.r_min, self.r_max,
                self.d_val, self.d_last, self.d_n, status, out,
            ),
        )  # fmt: skip
        return out, status

    @staticmethod
    def _distinct(distinct: I64 | None, n: int) -> I64:
        return np.full(n, -1, np.int64) if distinct is None else distinct

    def _resumable(self, n: int, run: Callable[[int], int]) -> None:
        """Run a kernel to the end, doubling the distinct tables whenever it stops for space. ``run`` reads
        the arrays through ``self`` each call, so it sees the grown ones."""
        start = 0
        while start < n:
            start = run(start)
            if start < n:
                self._grow(distinct=self.d_val.shape[1] * 2)

    def read(self, rows: I64) -> F64:
        """Feature values (columns in plan order) as of each row's newest event; NaN = null."""
        out = np.empty((len(rows), len(self.kinds)), np.float64)
        kernels.read_features(
            rows, self.kinds, self.cols, self.wins, self.dwindows, self.cur_k, self.max_t, self.prev_t,
            self.r_cnt, self.r_sum, self.r_min, self.r_max, self.d_last, self.d_n, out,
        )  # fmt: skip
        return out

    def evict_idle(self, now_ms: int) -> int:
        """Recycle rows whose newest event left the longest window before ``now_ms``."""
        horizon = self.plan.horizon_ms
        idle = np.nonzero((self.max_t != kernels.NO_TIME) & (self.max_t < now_ms - horizon))[0]
        for row in idle.tolist():
            key = self.ids[row]
            if key is None:
                continue
            del self.rows[key]
            self.ids[row] = None
            self.free.append(row)
            self._reset_row(row)
        return len(idle)

    def _reset_row(self, row: int | slice) -> None:
        for name in ("cur_k", "tile_id", "d_val", "d_last"):
            getattr(self, name)[row] = -1
        for name in ("max_t", "prev_t", "seen_max"):
            getattr(self, name)[row] = kernels.NO_TIME
        for name in ("t_cnt", "t_sum", "r_cnt", "r_sum", "d_n"):
            getattr(self, name)[row] = 0
        for name in ("t_min", "r_min"):
            getattr(self, name)[row] = np.inf
        for name in ("t_max", "r_max"):
            getattr(self, name)[row] = -np.inf

    # Snapshots: everything needed to resume exactly, as one blob. Only rows in use are kept, and lz4
    # rather than zlib: a snapshot runs every few seconds under the processing lock, so speed matters
    # more than the last 20% of size (empty tiles compress to almost nothing either way).
    def to_bytes(self) -> bytes:
        used = len(self.ids)
        buf = io.BytesIO()
        arrays: dict[str, Any] = {name: getattr(self, name)[:used] for name in _ARRAYS}
        # Strings as NUL-joined UTF-8, so loading never needs pickle.
        arrays["ids"] = np.frombuffer("\0".join("" if k is None else k for k in self.ids).encode(), np.uint8)
        arrays["values"] = np.frombuffer("\0".join(self.values).encode(), np.uint8)
        np.savez(buf, **arrays)
        return bytes(lz4.frame.compress(buf.getvalue()))

    @classmethod
    def from_bytes(cls, plan: ViewPlan, data: bytes) -> ViewState:
        state = cls(plan, capacity=1)
        with np.load(io.BytesIO(lz4.frame.decompress(data)), allow_pickle=False) as blob:
            for name in _ARRAYS:
                setattr(state, name, blob[name].copy())
            ids = blob["ids"].tobytes().decode().split("\0") if blob["ids"].size else []
            values = blob["values"].tobytes().decode().split("\0") if blob["values"].size else []
        state.ids = [k or None for k in ids]
        state.rows = {k: i for i, k in enumerate(ids) if k}
        state.free = [i for i, k in enumerate(ids) if not k]
        state.values = {v: i for i, v in enumerate(values)}
        return state
