"""The input bounds: the Python checks (stream processor, worker) and the backfill's SQL refuse the same values."""

from __future__ import annotations

import duckdb
import pytest

from streamscore.bounds import InputBounds

IDS = [
    "u-1", "", "a\0b", "tab\there", "new\nline", "del\x7f", "c1\x85", "x" * 128, "x" * 129, "ü" * 128, "ü" * 129,
    "émoji-🙂", "slash/ok", "space ok",
]  # fmt: skip
AMOUNTS = [0.0, 12.5, 10_000_000.0, 10_000_000.01, 1e12, 1e300, -0.01, float("nan"), float("inf"), float("-inf")]


def test_python_and_sql_bounds_agree_on_every_value() -> None:
    bounds = InputBounds()
    rows = [(i, a) for i in IDS for a in AMOUNTS]
    con = duckdb.connect()
    con.execute("CREATE TABLE t (n INTEGER, user_id VARCHAR, amount DOUBLE)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", [(n, i, a) for n, (i, a) in enumerate(rows)])
    con.execute("INSERT INTO t VALUES (?, NULL, 1.0), (?, 'u', NULL)", [len(rows), len(rows) + 1])
    accepted = {n for (n,) in con.execute(f"SELECT n FROM t WHERE {bounds.sql_valid(('user_id',))}").fetchall()}
    expected = {n for n, (i, a) in enumerate(rows) if bounds.problem({"user_id": i, "amount": a}, ("user_id",)) is None}
    assert accepted == expected
    assert len(expected) == 6 * 3  # the usable ids times the usable amounts: the test is not vacuous


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"user_id": "a\0b", "amount": 1.0}, "user-id-control-character"),
        ({"user_id": "x" * 129, "amount": 1.0}, "user-id-too-long"),
        ({"user_id": None, "amount": 1.0}, "missing-user-id"),
        ({"user_id": "u", "amount": 1e12}, "amount-too-large"),
        ({"user_id": "u", "amount": -1.0}, "amount-negative"),
        ({"user_id": "u", "amount": float("nan")}, "amount-not-finite"),
        ({"user_id": "u", "amount": True}, "amount-not-finite"),
        ({"user_id": "u", "amount": 3}, None),
    ],
)
def test_each_problem_has_its_reason(record: dict[str, object], reason: str | None) -> None:
    assert InputBounds().problem(record, ("user_id",)) == reason


def test_bounds_are_configurable() -> None:
    bounds = InputBounds(max_id_length=4, max_amount=100.0)
    assert bounds.problem({"user_id": "abcde", "amount": 1.0}, ("user_id",)) == "user-id-too-long"
    assert bounds.problem({"user_id": "abcd", "amount": 100.5}, ("user_id",)) == "amount-too-large"
