"""What an id or an amount may be, in one place for the feature processor, the backfill and the worker.

Avro only says "a string" and "a double". Ids become Redis keys, state-topic keys and log lines, so a NUL
or a newline in one, or a megabyte-long one, is a producer bug to refuse rather than carry. An amount of
1e300 is finite yet makes every sum it touches meaningless and pushes the model far outside anything it was
trained on (it scored such a purchase NaN, published as "not fraud"). Each path checks the same bounds: the
stream and the worker call :meth:`InputBounds.problem`, the backfill's SQL uses :meth:`InputBounds.sql_valid`,
so the same events are refused everywhere.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["InputBounds"]

# Control characters (C0, DEL, C1): invisible in logs and tables, and NUL splits ids in many tools.
_CONTROL = "\\x00-\\x1f\\x7f-\\x9f"
_BAD_CHAR = re.compile(f"[{_CONTROL}]")


@dataclass(frozen=True)
class InputBounds:
    max_id_length: int = 128
    max_amount: float = 10_000_000.0

    def id_problem(self, value: object) -> str | None:
        """``missing``, ``too-long`` or ``control-character``, or None for a usable id."""
        if not isinstance(value, str) or not value:
            return "missing"
        if len(value) > self.max_id_length:
            return "too-long"
        if _BAD_CHAR.search(value):
            return "control-character"
        return None

    def amount_problem(self, value: object) -> str | None:
        """``not-finite``, ``negative`` or ``too-large``, or None."""
        if isinstance(value, bool) or not isinstance(value, float | int) or not math.isfinite(value):
            return "not-finite"
        if value < 0:
            return "negative"
        if value > self.max_amount:
            return "too-large"
        return None

    def problem(self, record: dict[str, object], ids: tuple[str, ...], amount: str = "amount") -> str | None:
        """The first problem of a decoded record, as a dead-letter reason (``user-id-too-long``,
        ``amount-too-large``, ...), or None."""
        for key in ids:
            found = self.id_problem(record.get(key))
            if found is not None:
                name = key.replace("_", "-")
                return f"missing-{name}" if found == "missing" else f"{name}-{found}"
        found = self.amount_problem(record.get(amount))
        return None if found is None else f"amount-{found}"

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
