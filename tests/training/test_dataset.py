"""The training set is point-in-time correct, checked independently of Feast with pandas ``merge_asof`` on the
offline tables; bad input stops with one TrainingDataError."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamscore.features.request import REQUEST_FEATURES, request_features
from streamscore.generator import ARROW_SCHEMA
from streamscore.settings import Settings
from streamscore.store import feature_store, quiet_feast
from streamscore.training import TrainingDataError, TrainingSet, build_training_set, service_features
from streamscore.training.dataset import SPLITS
from tests.training.helpers import VIEWS, History, data_dir_with

pytestmark = pytest.mark.integration

KEYS = {"user_transactions": "user_id", "merchant_transactions": "merchant_id"}
# Not the defaults (0.15 / 0.15), so a split that ignored the settings would show.
VALIDATION_FRACTION, TEST_FRACTION = 0.2, 0.1


@pytest.fixture(scope="module")
def settings(history: History, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return data_dir_with(
        history,
        tmp_path_factory.mktemp("dataset"),
        validation_fraction=VALIDATION_FRACTION,
        test_fraction=TEST_FRACTION,
    )


@pytest.fixture(scope="module")
def window(history: History) -> tuple[datetime, datetime]:
    """An hour in, so rows at the window's start have features from the history before it."""
    return history.start + timedelta(hours=1), history.end


@pytest.fixture(scope="module")
def built(settings: Settings, history: History, window: tuple[datetime, datetime]) -> tuple[TrainingSet, list]:
    calls: list[tuple[int, int]] = []
    data = build_training_set(
        settings, feature_store(settings), history.events, *window, progress=lambda d, t: calls.append((d, t))
    )
    return data, calls


@pytest.fixture(scope="module")
def data(built: tuple[TrainingSet, list]) -> TrainingSet:
    return built[0]


def labelled_events(events: Path, start: datetime, end: datetime) -> pd.DataFrame:
    """The labelled transactions of ``[start, end)``: one per event_id (first arrival), valid amounts only."""
    raw = pd.read_parquet(events)
    rows = raw[(raw["event_time"] >= start) & (raw["event_time"] < end)]
    rows = rows[rows["is_fraud"].notna() & np.isfinite(rows["amount"]) & (rows["amount"] >= 0)]
    return rows.drop_duplicates("event_id", keep="first").reset_index(drop=True)


def as_of_join(labels: pd.DataFrame, offline: Path, key: str, ttl: timedelta, *, offset: timedelta) -> pd.DataFrame:
    """For each label, the latest offline row of its entity at or before ``event_time - offset`` and within
    ``ttl`` of it (NaN when there is none), plus that row's timestamp as ``matched_at``."""
    table = pd.read_parquet(offline).sort_values("event_timestamp", kind="stable")
    table["matched_at"] = table["event_timestamp"]
    left = labels[["event_id", key, "event_time"]].copy()
    left["as_of"] = (left["event_time"] - pd.Timedelta(offset)).astype(table["event_timestamp"].dtype)
    joined = pd.merge_asof(
        left.sort_values("as_of", kind="stable"),
        table,
        left_on="as_of",
        right_on="event_timestamp",
        by=key,
        direction="backward",
        allow_exact_matches=True,
        tolerance=pd.Timedelta(ttl),
    )
    return joined.set_index("event_id")


@pytest.fixture(scope="module")
def expected(settings: Settings, history: History, window: tuple[datetime, datetime]) -> pd.DataFrame:
    """Labels and store features computed without Feast: merge_asof at event_time - 1 ms, within each view's ttl."""
    labels = labelled_events(history.events, *window).set_index("event_id")
    store = feature_store(settings)
    out = labels.copy()
    for view in VIEWS:
        with quiet_feast():
            ttl = store.get_stream_feature_view(view).ttl
        assert ttl == timedelta(days=2)
        joined = as_of_join(
            labels.reset_index(), history.offline / f"{view}.parquet", KEYS[view], ttl, offset=timedelta(milliseconds=1)
        )
        features = [c for c in joined.columns if c.startswith(view.split("_")[0] + "_") and c != KEYS[view]]
        out = out.join(joined[features].astype(np.float64))
        out[f"{view}_matched_at"] = joined["matched_at"]
    return out


def by_event(data: TrainingSet) -> pd.DataFrame:
    return data.frame.set_index("event_id")


# -- point in time -----------------------------------------------------------------------------------------------


def test_store_features_are_the_latest_offline_row_strictly_before_the_transaction(
    data: TrainingSet, expected: pd.DataFrame
) -> None:
    got = by_event(data).loc[expected.index]
    for name in data.store_features:
        np.testing.assert_array_equal(got[name].to_numpy(np.float64), expected[name].to_numpy(np.float64), err_msg=name)
    for view in VIEWS:
        matched = expected[f"{view}_matched_at"]
        assert (matched.dropna() < expected.loc[matched.notna(), "event_time"]).all()  # never the row's own time


def test_the_independent_check_can_tell_a_leak(
    data: TrainingSet, expected: pd.DataFrame, history: History, window: tuple[datetime, datetime]
) -> None:
    """Joining at the event time itself (the transaction counted in its own features) gives other values for
    most rows, so the comparison above would catch an off-by-one in the entity timestamp."""
    labels = labelled_events(history.events, *window)
    leaky = as_of_join(
        labels, history.offline / "user_transactions.parquet", "user_id", timedelta(days=2), offset=timedelta(0)
    )
    got = by_event(data).loc[leaky.index, "user_amount_count_24h"].to_numpy(np.float64)
    differs = ~np.isclose(got, leaky["user_amount_count_24h"].to_numpy(np.float64), equal_nan=True)
    assert differs.mean() > 0.9


def test_features_older_than_the_views_ttl_are_missing(settings: Settings, history: History, tmp_path: Path) -> None:
    """Transactions from one hour to four days after the backfilled history: a view's latest row counts only
    while it is at most its ttl (2 days) old."""
    raw = pd.read_parquet(history.events)
    later = raw.sample(n=240, random_state=0).reset_index(drop=True)
    step = timedelta(days=4) / len(later)
    later["event_id"] = [f"later-{i}" for i in range(len(later))]
    later["event_time"] = [history.end + timedelta(hours=1) + i * step for i in range(len(later))]
    later["event_time"] = later["event_time"].astype(raw["event_time"].dtype)
    later["is_fraud"] = np.arange(len(later)) % 2 == 0
    events = tmp_path / "later.parquet"
    pq.write_table(pa.Table.from_pandas(later, schema=ARROW_SCHEMA, preserve_index=False), events)
    start, end = history.end, history.end + timedelta(days=4, hours=2)
    lenient = settings.model_copy(update={"training": settings.training.model_copy(update={"min_positives": 1})})
    got = build_training_set(lenient, feature_store(lenient), events, start, end).frame.set_index("event_id")

    last_seen = (
        pd.read_parquet(history.offline / "user_transactions.parquet").groupby("user_id")["event_timestamp"].max()
    )
    age = later.set_index("event_id").pipe(lambda f: f["event_time"] - f["user_id"].map(last_seen))
    expired = (age > pd.Timedelta(days=2)).reindex(got.index)
    assert 20 < expired.sum() < len(got) - 20  # both sides of the ttl are exercised
    assert got.loc[expired, "user_amount_count_24h"].isna().all()
    assert got.loc[~expired, "user_amount_count_24h"].notna().all()
    joined = as_of_join(
        later,
        history.offline / "user_transactions.parquet",
        "user_id",
        timedelta(days=2),
        offset=timedelta(milliseconds=1),
    )
    for name in [f for f in got.columns if f.startswith("user_")]:
        np.testing.assert_array_equal(
            got[name].to_numpy(np.float64), joined.loc[got.index, name].to_numpy(np.float64), err_msg=name
        )


def test_entities_without_history_stay_missing(data: TrainingSet, expected: pd.DataFrame) -> None:
    got = by_event(data).loc[expected.index]
    user_missing = expected["user_transactions_matched_at"].isna()
    merchant_missing = expected["merchant_transactions_matched_at"].isna()
    assert 0 < user_missing.sum() < len(expected) // 10  # some first transactions, not a broken join
    assert merchant_missing.sum() > 0
    assert got.loc[user_missing, [f for f in data.store_features if f.startswith("user_")]].isna().all().all()
    assert got.loc[merchant_missing, [f for f in data.store_features if f.startswith("merchant_")]].isna().all().all()
    assert got.loc[~user_missing, "user_amount_count_24h"].notna().all()


def test_features_follow_the_feature_service_then_request_features(settings: Settings, data: TrainingSet) -> None:
    with quiet_feast():
        declared = [name for _, name in service_features(feature_store(settings), "fraud_model_v1")]
    assert list(data.store_features) == declared
    assert data.request_features == REQUEST_FEATURES
    assert data.features == (*declared, *REQUEST_FEATURES)
    assert list(data.frame.columns) == ["event_id", "event_time", "split", "label", *data.features]
    x, y = data.split("test")
    assert x.dtype == np.float64
    assert y.dtype == np.int8
    assert x.shape == (len(y), len(data.features))


def test_request_features_are_recomputed_the_serving_way(data: TrainingSet, expected: pd.DataFrame) -> None:
    got = by_event(data).loc[expected.index]
    store = {name: expected[name].to_numpy(np.float64) for name in data.store_features}
    want = request_features(expected["amount"].to_numpy(), expected["channel"].to_numpy(), store)
    assert list(want) == list(data.request_features)
    for name, values in want.items():
        np.testing.assert_array_equal(got[name].to_numpy(np.float64), values, err_msg=name)
    assert got["req_channel_ecom"].sum() > 0
    assert got["req_amount_to_user_mean_24h"].notna().sum() > 0


def test_labels_are_the_transactions_is_fraud_one_row_per_event(data: TrainingSet, expected: pd.DataFrame) -> None:
    assert data.frame["event_id"].is_unique
    assert set(data.frame["event_id"]) == set(expected.index)
    got = by_event(data).loc[expected.index, "label"]
    np.testing.assert_array_equal(got.to_numpy(), expected["is_fraud"].astype(np.int8).to_numpy())
    assert 0 < got.sum() < len(got)


def test_splits_are_time_ordered_windows_of_the_configured_fractions(
    data: TrainingSet, window: tuple[datetime, datetime]
) -> None:
    start, end = window
    frame = data.frame
    assert frame["event_time"].is_monotonic_increasing
    times = {name: frame.loc[frame["split"] == name, "event_time"] for name in SPLITS}
    assert all(len(t) > 0 for t in times.values())
    assert times["train"].max() < times["validation"].min() <= times["validation"].max() < times["test"].min()

    span, eps = end - start, timedelta(microseconds=1)
    w = data.windows
    assert list(w) == list(SPLITS)
    assert w["train"][0] == start
    assert w["test"][1] == end
    assert w["train"][1] == w["validation"][0]
    assert w["validation"][1] == w["test"][0]
    assert abs((w["test"][1] - w["test"][0]) - span * TEST_FRACTION) <= eps
    assert abs((w["validation"][1] - w["validation"][0]) - span * VALIDATION_FRACTION) <= eps
    for name in SPLITS:
        assert (times[name] >= w[name][0]).all()
        assert (times[name] < w[name][1]).all()


def test_progress_reaches_the_row_count(built: tuple[TrainingSet, list]) -> None:
    data, calls = built
    assert calls
    assert calls[-1] == (len(data.frame), len(data.frame))


def test_feasts_duckdb_store_asked_in_chunks_gives_the_same_training_set(
    settings: Settings, history: History, window: tuple[datetime, datetime], built: tuple[TrainingSet, list]
) -> None:
    data, calls = built
    assert len(calls) == 1  # the ASOF store answers every label row in one call
    feasts = settings.model_copy(update={"training": settings.training.model_copy(update={"offline_store": "duckdb"})})
    chunks: list[tuple[int, int]] = []
    theirs = build_training_set(
        feasts, feature_store(feasts), history.events, *window, progress=lambda d, t: chunks.append((d, t))
    )
    rows = len(data.frame)
    assert rows > 10_000
    assert [done for done, _ in chunks] == [*range(10_000, rows, 10_000), rows]  # Feast's store: 10k a call
    pd.testing.assert_frame_equal(theirs.frame, data.frame, check_exact=True)


def test_duplicate_deliveries_collapse_to_their_first_arrival(
    settings: Settings, data: TrainingSet, history: History, window: tuple[datetime, datetime], tmp_path: Path
) -> None:
    raw = pd.read_parquet(history.events)
    in_window = raw.index[(raw["event_time"] >= window[0]) & (raw["event_time"] < window[1])]
    again = raw.loc[in_window[::40]].copy()
    again["is_fraud"] = ~again["is_fraud"].astype(bool)  # a later copy must not change the label...
    again["amount"] = again["amount"] * 3 + 1  # ...nor the request features
    assert len(again) > 100
    events = tmp_path / "redelivered.parquet"
    pq.write_table(pa.Table.from_pandas(pd.concat([raw, again]), schema=ARROW_SCHEMA, preserve_index=False), events)
    redelivered = build_training_set(settings, feature_store(settings), events, *window)
    pd.testing.assert_frame_equal(redelivered.frame, data.frame)


# -- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hours", [0, -1])
def test_an_empty_window_is_refused(settings: Settings, history: History, hours: int) -> None:
    start = history.start + timedelta(hours=2)
    with pytest.raises(TrainingDataError, match="empty window"):
        build_training_set(settings, feature_store(settings), history.events, start, start + timedelta(hours=hours))


def test_a_range_without_events_is_refused(settings: Settings, history: History) -> None:
    start = history.start - timedelta(days=30)
    with pytest.raises(TrainingDataError, match="no labelled transactions between"):
        build_training_set(settings, feature_store(settings), history.events, start, start + timedelta(days=1))


def test_a_missing_events_file_is_refused(settings: Settings, history: History, tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="no labelled transactions at"):
        build_training_set(settings, feature_store(settings), tmp_path / "nope.parquet", history.start, history.end)


def test_too_few_positives_names_the_split(
    settings: Settings, data: TrainingSet, history: History, window: tuple[datetime, datetime]
) -> None:
    positives = {name: int(data.split(name)[1].sum()) for name in SPLITS}
    needed = min(positives["validation"], positives["test"]) + 1
    short = next(name for name in SPLITS if positives[name] < needed)
    strict = settings.model_copy(
        update={"training": settings.training.model_copy(update={"min_positives": needed})}
    )  # fmt: skip
    with pytest.raises(TrainingDataError, match=f"the {short} window has {positives[short]} fraud label"):
        build_training_set(strict, feature_store(strict), history.events, *window)


def test_too_few_positives_in_the_first_split_checked(settings: Settings, history: History) -> None:
    strict = settings.model_copy(update={"training": settings.training.model_copy(update={"min_positives": 10_000})})
    start = history.start + timedelta(hours=2)
    with pytest.raises(
        TrainingDataError,
        match=r"the train window has \d+ fraud label\(s\) among [\d,]+ rows; at least 10000 positives",
    ):
        build_training_set(strict, feature_store(strict), history.events, start, start + timedelta(hours=2))


def test_the_spark_store_gives_the_same_training_set(
    settings: Settings, history: History, window: tuple[datetime, datetime], built: tuple[TrainingSet, list]
) -> None:
    """The point-in-time join on Spark (local mode), for history beyond one machine: the same rows, cell for cell."""
    data, _ = built
    spark = settings.model_copy(update={"training": settings.training.model_copy(update={"offline_store": "spark"})})
    chunks: list[tuple[int, int]] = []
    theirs = build_training_set(
        spark, feature_store(spark), history.events, *window, progress=lambda d, t: chunks.append((d, t))
    )
    assert chunks == [(len(data.frame), len(data.frame))]
    pd.testing.assert_frame_equal(theirs.frame, data.frame, check_exact=True)


@pytest.mark.parametrize("offline_store", ["asof", "spark"])
@pytest.mark.parametrize("removed", [VIEWS, VIEWS[1:]], ids=["offline-dir", "one-view"])
def test_missing_offline_tables_are_refused(
    history: History, tmp_path: Path, removed: tuple[str, ...], offline_store: str
) -> None:
    settings = data_dir_with(history, tmp_path / "data")
    settings = settings.model_copy(
        update={"training": settings.training.model_copy(update={"offline_store": offline_store})}
    )
    if removed == VIEWS:
        shutil.rmtree(tmp_path / "data" / "offline")
    else:
        for view in removed:
            (tmp_path / "data" / "offline" / f"{view}.parquet").unlink()
    start = history.start + timedelta(hours=2)
    with pytest.raises(TrainingDataError, match="offline"):
        build_training_set(settings, feature_store(settings), history.events, start, start + timedelta(hours=3))


def test_an_unknown_feature_service_is_refused(settings: Settings, history: History) -> None:
    other = settings.model_copy(update={"training": settings.training.model_copy(update={"feature_service": "nope"})})
    with pytest.raises(TrainingDataError, match="feature service 'nope' is not registered"):
        build_training_set(other, feature_store(other), history.events, history.start, history.end)
