"""What an id or an amount may be, in one place for the feature processor, the backfill and the worker.

Avro only says "a string" and "a double". Ids become Redis keys, state-topic keys and log lines, so a NUL
or a newline in one, or a megabyte-long one, is a producer bug to refuse rather than carry. An amount of
1e300 is finite yet makes every sum it touches meaningless and pushes the model far outside anything it was
trained on (it scored such a purchase NaN, published as "not fraud"). Each path checks the same bounds: the
stream and the worker check whole batches with :meth:`InputBounds.problems` (Arrow compute over columns), the
backfill's SQL uses :meth:`InputBounds.sql_valid`, so the same events are refused everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["InputBounds", "true_where"]

# Control characters (C0, DEL, C1): invisible in logs and tables, and NUL splits ids in many tools.
_CONTROL = "\\x00-\\x1f\\x7f-\\x9f"
_BAD_CHAR = "[\\x{00}-\\x{1f}\\x{7f}-\\x{9f}]"  # the same class in RE2's syntax (Arrow's regexes)


@dataclass(frozen=True)
class InputBounds:
    max_id_length: int = 128
    max_amount: float = 10_000_000.0

    def problems(
        self, columns: Mapping[str, pa.Array | pa.ChunkedArray], ids: Sequence[str], amount: str = "amount"
    ) -> np.ndarray:
        """The first problem of each row, as a dead-letter reason (``missing-user-id``, ``user-id-too-long``,
        ``user-id-control-character``, ``amount-not-finite``, ``amount-negative``, ``amount-too-large``), or
        None: an object array. Ids are checked in order, then the amount; a null counts as missing/not finite.

        Later assignments win, so the checks run from the least to the most important."""
        values = columns[amount]
        n = len(values)
        reasons = np.full(n, None, object)
        money = np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
        with np.errstate(invalid="ignore"):
            reasons[money > self.max_amount] = "amount-too-large"
            reasons[money < 0] = "amount-negative"
        reasons[~np.isfinite(money)] = "amount-not-finite"
        if not ids:
            return reasons
        # Every id column in one array: each Arrow call costs ~10 µs whatever its length, which matters for the
        # worker's small batches.
        every = pa.concat_arrays([_array(columns[key]).cast(pa.string()) for key in ids])
        length = np.asarray(pc.fill_null(pc.utf8_length(every), 0).to_numpy(), np.int64).reshape(len(ids), n)
        control = true_where(pc.match_substring_regex(every, _BAD_CHAR)).reshape(len(ids), n)
        for k in reversed(range(len(ids))):
            name = ids[k].replace("_", "-")
            reasons[control[k]] = f"{name}-control-character"
            reasons[length[k] > self.max_id_length] = f"{name}-too-long"
            reasons[length[k] == 0] = f"missing-{name}"
        return reasons

    def problems_of(
        self, records: Sequence[Mapping[str, object]], ids: Sequence[str], amount: str = "amount"
    ) -> np.ndarray:
        """:meth:`problems` of decoded records (a value of the wrong type counts as missing/not finite)."""
        columns = {
            key: pa.array([v if isinstance(v := r.get(key), str) else None for r in records], pa.string())
            for key in ids
        }
        columns[amount] = pa.array([_number(r.get(amount)) for r in records], pa.float64())
        return self.problems(columns, ids, amount)

    def problem(self, record: Mapping[str, object], ids: Sequence[str], amount: str = "amount") -> str | None:
        """:meth:`problems` of one record."""
        found: str | None = self.problems_of([record], ids, amount)[0]
        return found

    def sql_valid(
        self, ids: tuple[str, ...], amount: str = "amount", *, dialect: Literal["duckdb", "spark"] = "duckdb"
    ) -> str:
        """A SQL predicate true exactly where :meth:`problem` finds none (the backfill's filter), for DuckDB or
        Spark SQL. Spark has neither ``regexp_full_match`` nor ``isfinite``: an anchored Java regex in a raw
        string (``\\z``: the very end, where ``$`` would also match before a final newline), and ``isnan`` (NaN
        sorts above every number in Spark, infinities fall outside the bounds)."""
        if dialect == "spark":
            checks = [f"`{key}` RLIKE r'^[^{_CONTROL}]{{1,{self.max_id_length}}}\\z'" for key in ids]
            checks.append(
                f"`{amount}` IS NOT NULL AND NOT isnan(`{amount}`) AND `{amount}` BETWEEN 0 AND {self.max_amount!r}D"
            )
        else:
            checks = [f"regexp_full_match(\"{key}\", '[^{_CONTROL}]{{1,{self.max_id_length}}}')" for key in ids]
            checks.append(
                f'"{amount}" IS NOT NULL AND isfinite("{amount}") AND "{amount}" BETWEEN 0 AND {self.max_amount!r}'
            )
        return " AND ".join(f"({c})" for c in checks)


def true_where(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean mask as numpy, null as False."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), np.bool_)


def _array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, float | int):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond any double
        return float("inf")
