"""Feast's get_historical_features over the backfilled tables is point-in-time correct, checked by hand."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamscore.features import backfill, load_plans, rules_for
from streamscore.generator import ARROW_SCHEMA
from streamscore.settings import Settings
from streamscore.store import apply_definitions, feature_store, quiet_feast

pytestmark = pytest.mark.integration


def _t(hms: str) -> datetime:
    return datetime.fromisoformat(f"2026-03-02T{hms}+00:00")


EVENTS = [  # user u1: (time, amount, merchant); u2 has one event, in the middle
    ("u1", "10:00:00", 10.0, "m1"),
    ("u1", "10:02:30", 20.0, "m2"),
    ("u1", "10:04:59", 30.0, "m1"),
    ("u2", "10:03:00", 99.0, "m9"),
    ("u1", "11:30:00", 40.0, "m3"),
]


def test_historical_features_never_see_the_future(settings: Settings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"data_dir": tmp_path})
    apply_definitions(s)
    plans = load_plans(s)
    rows = [
        {
            "event_id": f"e{i}", "user_id": u, "merchant_id": m, "amount": a, "currency": "EUR", "country": "DE",
            "channel": "POS", "event_time": _t(t), "is_fraud": False,
        }
        for i, (u, t, a, m) in enumerate(EVENTS)
    ]  # fmt: skip
    history = tmp_path / "history.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=ARROW_SCHEMA), history)
    backfill(history, plans, tmp_path / "offline", start=_t("09:00:00"), end=_t("12:00:00"), rules=rules_for(s, plans))

    labels = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u1", "u1", "u1", "u2"],
            "merchant_id": ["m1"] * 7,
            "event_timestamp": [
                _t("09:59:59"),  # before any event: nothing
                _t("10:00:00"),  # at the first event: it counts (its own transaction)
                _t("10:02:29.999"),  # just before the second: still only the first
                _t("10:04:59"),
                _t("11:29:59"),  # long after: the values as of the last event, 10:04:59
                _t("11:30:00"),
                _t("10:02:00"),  # u2's only event is later
            ],
        }
    )
    store = feature_store(s)
    refs = [
        "user_transactions:user_amount_count_5m",
        "user_transactions:user_amount_sum_5m",
        "user_transactions:user_amount_max_1h",
        "user_transactions:user_merchant_count_distinct_1h",
        "user_transactions:user_secs_since_prev_txn",
        "merchant_transactions:merchant_amount_count_10m",
    ]
    refs_names = [r.split(":")[1] for r in refs]
    with quiet_feast():
        got = store.get_historical_features(entity_df=labels, features=refs).to_df()
    assert len(got) == len(labels)
    got = got.sort_values("event_timestamp", kind="stable").set_index(["user_id", "event_timestamp"])

    def row(user: str, hms: str) -> pd.Series:
        return got.loc[(user, pd.Timestamp(_t(hms)))]

    # Before an entity's first event there is no value: the row stays, with nulls (never a future value).
    assert got.loc[("u1", pd.Timestamp(_t("09:59:59")))][refs_names].isna().all()
    early = row("u2", "10:02:00")
    assert early[[r for r in refs_names if r.startswith("user")]].isna().all()
    assert early.merchant_amount_count_10m == 1  # m1's 10:00:00 event is in the past
    first = row("u1", "10:00:00")
    assert (first.user_amount_count_5m, first.user_amount_sum_5m, first.user_amount_max_1h) == (1, 10.0, 10.0)
    assert pd.isna(first.user_secs_since_prev_txn)
    assert row("u1", "10:02:29.999").user_amount_count_5m == 1
    third = row("u1", "10:04:59")  # 5 min window at 10:04:59 = tiles 10:00..10:04: all three events
    assert (third.user_amount_count_5m, third.user_amount_sum_5m, third.user_amount_max_1h) == (3, 60.0, 30.0)
    assert third.user_merchant_count_distinct_1h == 2
    assert third.user_secs_since_prev_txn == pytest.approx(149.0)
    assert row("u1", "11:29:59").user_amount_sum_5m == 60.0  # as of 10:04:59, the last event before
    last = row("u1", "11:30:00")  # 5 min and 1 h windows now hold only the 11:30 event
    assert (last.user_amount_count_5m, last.user_amount_sum_5m, last.user_amount_max_1h) == (1, 40.0, 40.0)
    assert last.user_secs_since_prev_txn == pytest.approx(5101.0)
    # m1 had events at 10:00:00 and 10:04:59; at 10:02:29.999 only the first is in the past.
    assert row("u1", "10:02:29.999").merchant_amount_count_10m == 1
    assert row("u1", "11:29:59").merchant_amount_count_10m == 2
