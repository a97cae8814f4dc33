"""The ASOF and Spark offline stores answer ``get_historical_features`` exactly as Feast's DuckDB store does.

A throwaway Feast repo (file registry, no online store) with three views over Parquet files written here: one
with a field mapping, a renamed timestamp, a created timestamp and a ttl; one keyed on two join keys with
timezone-naive timestamps and no ttl; one with a zero ttl. The history has ties on the event timestamp (told
apart only by the created timestamp, written in shuffled order), gaps longer than the ttl, null values, and
entity rows at, just after and just beyond the ttl bound, for keys with and without history, with extra columns.
Every store reads the same registry and files; their frames must match cell for cell, dtypes included. The
suite runs once per store of ours (``ours``); the Spark one runs in local mode. Nothing here needs Kafka or Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, RepoConfig
from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig
from feast.repo_config import RegistryConfig, load_repo_config
from feast.types import Bool, Float64, Int64, String
from feast.value_type import ValueType

from streamscore.settings import Settings
from streamscore.store import REPO_PATH, quiet_feast, repo_config
from streamscore.store.offline import STORE_TYPE, AsofDuckDBOfflineStoreConfig, AsofRetrievalJob
from streamscore.store.offline_spark import STORE_TYPE as SPARK_STORE_TYPE
from streamscore.store.offline_spark import SparkOfflineStoreConfig, SparkRetrievalJob

T0 = datetime(2026, 3, 1, tzinfo=UTC)
USER_TTL = timedelta(hours=1)
USERS = [f"u{i}" for i in range(40)]  # u30..u39 have no history
MERCHANTS = [f"m{i}" for i in range(6)]
PAIR_FEATURES = ["pair_stats:v", "pair_stats:flag"]
USER_FEATURES = ["user_stats:x", "user_stats:n", "user_stats:s"]
USER_NAMES = [ref.split(":")[1] for ref in USER_FEATURES]
ALL_FEATURES = [*USER_FEATURES, *PAIR_FEATURES, "zero_ttl:z"]
JOBS = {STORE_TYPE: AsofRetrievalJob, SPARK_STORE_TYPE: SparkRetrievalJob}


@pytest.fixture(params=[STORE_TYPE, SPARK_STORE_TYPE], ids=["asof", "spark"])
def ours(request: pytest.FixtureRequest) -> str:
    """Each of our stores' ``offline_store: type:``."""
    return str(request.param)


@dataclass(frozen=True)
class Repo:
    root: Path
    user_rows: pd.DataFrame  # the user_stats file as written (source column names)
    objects: list[Any]

    def store(self, offline: str) -> FeatureStore:
        config = RepoConfig(
            project="offline_parity",
            provider="local",
            registry=RegistryConfig(registry_type="file", path=str(self.root / "registry.db")),
            online_store={"type": "sqlite", "path": str(self.root / "online.db")},
            offline_store={"type": offline},
            entity_key_serialization_version=3,
            repo_path=self.root,
        )
        return FeatureStore(config=config)


def _stamps(rng: np.random.Generator, n: int, minutes: int) -> pd.Series:
    """``n`` event times over ``minutes`` after T0, whole seconds, so that ties are frequent."""
    return pd.Series(pd.Timestamp(T0) + pd.to_timedelta(rng.integers(0, minutes * 60, n), unit="s"))


def _user_rows(rng: np.random.Generator) -> pd.DataFrame:
    """user_stats: u0..u29 over 10 hours with a 3-hour silence in the middle (longer than the ttl); a third of
    the rows are re-emitted at the same event time with a later created time and other values."""
    n = 1_500
    users = rng.choice(USERS[:30], n)
    ts = _stamps(rng, n, 600)
    silent = (ts >= pd.Timestamp(T0 + timedelta(hours=4))) & (ts < pd.Timestamp(T0 + timedelta(hours=7)))
    base = pd.DataFrame({"uid": users, "ts": ts})[~silent.to_numpy()]
    again = base.sample(frac=0.33, random_state=1)
    rows = pd.concat([base, again, again.sample(frac=0.5, random_state=2)], ignore_index=True)
    m = len(rows)
    rows["created"] = rows["ts"] + pd.to_timedelta(rng.permutation(m) + 1, unit="ms")
    rows["x"] = rng.normal(size=m)
    rows.loc[rng.random(m) < 0.05, "x"] = np.nan  # a row whose value is null is still the row chosen
    rows["n"] = rng.integers(0, 1_000, m)
    rows["s"] = [f"s{i}" for i in range(m)]
    return rows.sample(frac=1.0, random_state=3).reset_index(drop=True)  # ties in no particular file order


def _pair_rows(rng: np.random.Generator) -> pd.DataFrame:
    """pair_stats on (user_id, merchant_id), naive UTC timestamps, no ttl; ties broken by created_at."""
    n = 1_200
    rows = pd.DataFrame(
        {
            "user_id": rng.choice(USERS[:20], n),
            "merchant_id": rng.choice(MERCHANTS[:5], n),  # m5 has no history
            "event_timestamp": _stamps(rng, n, 300).dt.tz_localize(None),
        }
    )
    rows = pd.concat([rows, rows.sample(frac=0.3, random_state=4)], ignore_index=True)
    m = len(rows)
    rows["created_at"] = rows["event_timestamp"] + pd.to_timedelta(rng.permutation(m) + 1, unit="s")
    rows["v"] = rng.normal(size=m)
    rows["flag"] = rng.random(m) < 0.5
    return rows.sample(frac=1.0, random_state=5).reset_index(drop=True)


def _zero_ttl_rows(rng: np.random.Generator) -> pd.DataFrame:
    """zero_ttl: a few rows early on, long before most entity rows (a zero ttl keeps them: no limit)."""
    ts = pd.Series(pd.Timestamp(T0) + pd.to_timedelta(np.arange(30) * 61, unit="s"))
    return pd.DataFrame({"user_id": [USERS[i % 30] for i in range(30)], "event_timestamp": ts, "z": rng.random(30)})


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    root = tmp_path_factory.mktemp("offline_repo")
    rng = np.random.default_rng(7)
    user_rows = _user_rows(rng)
    for name, frame in (("user", user_rows), ("pair", _pair_rows(rng)), ("zero", _zero_ttl_rows(rng))):
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), root / f"{name}.parquet")
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING)
    user_stats = FeatureView(
        name="user_stats",
        entities=[user],
        ttl=USER_TTL,
        schema=[Field(name="x", dtype=Float64), Field(name="n", dtype=Int64), Field(name="s", dtype=String)],
        source=FileSource(
            name="user_src",
            path=str(root / "user.parquet"),
            timestamp_field="ts",
            created_timestamp_column="created",
            field_mapping={"uid": "user_id"},
        ),
    )
    pair_stats = FeatureView(
        name="pair_stats",
        entities=[user, merchant],
        ttl=None,
        schema=[Field(name="v", dtype=Float64), Field(name="flag", dtype=Bool)],
        source=FileSource(
            name="pair_src",
            path=str(root / "pair.parquet"),
            timestamp_field="event_timestamp",
            created_timestamp_column="created_at",
        ),
    )
    zero_ttl = FeatureView(
        name="zero_ttl",
        entities=[user],
        ttl=timedelta(0),
        schema=[Field(name="z", dtype=Float64)],
        source=FileSource(name="zero_src", path=str(root / "zero.parquet"), timestamp_field="event_timestamp"),
    )
    service = FeatureService(name="everything", features=[user_stats, pair_stats, zero_ttl])
    # One of pair_stats' two keys read from another entity column: Feast maps key by key.
    payer = FeatureService(name="payer_pairs", features=[pair_stats.with_join_key_map({"user_id": "payer"})])
    objects = [user, merchant, user_stats, pair_stats, zero_ttl, service, payer]
    made = Repo(root=root, user_rows=user_rows, objects=objects)
    made.store("duckdb").apply(objects)
    return made


def _before_gaps(rows: pd.DataFrame) -> pd.DataFrame:
    """The (uid, ts) of user rows with no later row of their user within the ttl and a microsecond: entity rows
    at ``ts + ttl`` and just after it land on either side of the ttl's bound."""
    distinct = rows[["uid", "ts"]].drop_duplicates().sort_values(["uid", "ts"])
    following = distinct.groupby("uid")["ts"].shift(-1)
    gap = following.isna() | (following > distinct["ts"] + USER_TTL + timedelta(microseconds=1))
    return distinct[gap.to_numpy()].reset_index(drop=True)


def _entity_rows(repo: Repo, n: int = 1_200) -> pd.DataFrame:
    """Label rows over the whole history and beyond; rows exactly at, 1 µs before and 1 µs after the user ttl's
    bound and exactly at a feature row's own time; a duplicate row; a null key; extra columns."""
    rng = np.random.default_rng(11)
    stamps = _stamps(rng, n, 720) + pd.to_timedelta(rng.integers(0, 1_000_000, n), unit="us")
    users = list(rng.choice(USERS, n))
    merchants = list(rng.choice(MERCHANTS, n))
    picks = _before_gaps(repo.user_rows)
    for offset in (USER_TTL, USER_TTL + timedelta(microseconds=1), USER_TTL - timedelta(microseconds=1), timedelta(0)):
        stamps = pd.concat([stamps, picks["ts"] + offset], ignore_index=True)
        users += list(picks["uid"])
        merchants += list(rng.choice(MERCHANTS, len(picks)))
    users[0], merchants[0] = None, None
    stamps = pd.concat([stamps, stamps.iloc[[5]]], ignore_index=True)
    users.append(users[5])
    merchants.append(merchants[5])
    m = len(stamps)
    frame = pd.DataFrame(
        {
            "row_id": np.arange(m),
            "user_id": users,
            "merchant_id": merchants,
            "event_timestamp": stamps.dt.tz_convert(UTC),
            "label": rng.random(m) < 0.1,
            "amount": rng.gamma(2.0, 30.0, m),
            "note": [f"n{i % 7}" for i in range(m)],
        }
    )
    return frame.sample(frac=1.0, random_state=13).reset_index(drop=True)


def _historical(store: FeatureStore, entity: pd.DataFrame, features: Any, **kwargs: Any) -> Any:
    with quiet_feast():
        return store.get_historical_features(entity_df=entity.copy(), features=features, **kwargs)


def _by_row(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("row_id", kind="stable").reset_index(drop=True)


def _assert_parity(repo: Repo, ours: str, entity: pd.DataFrame, features: Any, **kwargs: Any) -> pd.DataFrame:
    """Feast's frame and ours, sorted by row_id, are equal; returns ours, in the order it came back."""
    theirs = _historical(repo.store("duckdb"), entity, features, **kwargs).to_df()
    job = _historical(repo.store(ours), entity, features, **kwargs)
    assert isinstance(job, JOBS[ours])
    ours = job.to_df()
    pd.testing.assert_frame_equal(_by_row(ours), _by_row(theirs), check_dtype=True, check_exact=True)
    return ours


# -- parity ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("full_feature_names", [True, False], ids=["full-names", "short-names"])
def test_frames_equal_feasts_for_every_view(repo: Repo, ours: str, full_feature_names: bool) -> None:
    entity = _entity_rows(repo)
    got = _assert_parity(repo, ours, entity, ALL_FEATURES, full_feature_names=full_feature_names)
    names = [ref.replace(":", "__") if full_feature_names else ref.split(":")[1] for ref in ALL_FEATURES]
    assert list(got.columns) == [*entity.columns, *names]
    assert got["row_id"].tolist() == entity["row_id"].tolist()  # the entity frame's order, not a hash join's


def test_frames_equal_feasts_for_a_feature_service_and_a_subset(repo: Repo, ours: str) -> None:
    entity = _entity_rows(repo)
    with quiet_feast():
        service = repo.store(ours).get_feature_service("everything")
    _assert_parity(repo, ours, entity, service, full_feature_names=True)
    _assert_parity(repo, ours, entity, ["pair_stats:flag", "user_stats:s"])


@pytest.mark.parametrize(
    "stamps",
    [
        pytest.param(lambda s: s.astype("datetime64[ms, UTC]"), id="ms-utc"),
        pytest.param(lambda s: s.dt.tz_convert("Europe/Berlin"), id="berlin"),
        pytest.param(lambda s: s.dt.tz_localize(None), id="naive"),
        pytest.param(lambda s: s.dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00"), id="strings"),
    ],
)
def test_entity_timestamps_in_any_form_give_feasts_frame(repo: Repo, ours: str, stamps: Any) -> None:
    entity = _entity_rows(repo, n=300)
    entity["event_timestamp"] = stamps(entity["event_timestamp"])
    _assert_parity(repo, ours, entity, ALL_FEATURES, full_feature_names=True)


def test_filter_by_created_timestamp_gives_feasts_frame(repo: Repo, ours: str) -> None:
    """A second inequality neither join takes: answered by Feast's own join, so it is Feast's frame."""
    entity = _entity_rows(repo, n=300)
    theirs = _historical(repo.store("duckdb"), entity, ALL_FEATURES, filter_by_created_timestamp=True).to_df()
    got = _historical(repo.store(ours), entity, ALL_FEATURES, filter_by_created_timestamp=True).to_df()
    pd.testing.assert_frame_equal(_by_row(got), _by_row(theirs))


def test_a_join_key_map_naming_one_of_two_keys_keeps_the_other(repo: Repo, ours: str) -> None:
    """Feast's SQL offline stores map key by key (``offline_utils``: ``join_key_map.get(key, key)``), and so do
    ours: remapping user_id must not drop merchant_id. Feast's DuckDB store is not the reference here: it joins
    on the mapped keys alone (``join_key_map or {...}`` in its ibis join), matching any merchant's row."""
    entity = _entity_rows(repo, n=300)
    with quiet_feast():
        service = repo.store(ours).get_feature_service("payer_pairs")
    payer = entity.rename(columns={"user_id": "payer"})
    job = _historical(repo.store(ours), payer, service)
    assert isinstance(job, JOBS[ours])
    got = job.to_df()
    plain = _historical(repo.store(ours), entity, PAIR_FEATURES).to_df()
    pd.testing.assert_frame_equal(
        _by_row(got).drop(columns=["payer"]), _by_row(plain).drop(columns=["user_id"]), check_exact=True
    )
    assert plain["v"].notna().sum() > 100  # the pairs do match: a dropped key would match every merchant's row


def test_an_empty_entity_frame_gives_an_empty_frame(repo: Repo, ours: str) -> None:
    entity = _entity_rows(repo, n=10).head(0)
    got = _historical(repo.store(ours), entity, ALL_FEATURES).to_df()
    assert got.empty
    assert list(got.columns) == [*entity.columns, *(ref.split(":")[1] for ref in ALL_FEATURES)]


# -- the cases parity covers are really there --------------------------------------------------------------------


def test_the_data_exercises_ties_ttl_and_missing_history(repo: Repo, ours: str) -> None:
    """Without these the parity above would prove little: ties whose newest-created value is not the first in
    the file, entity rows whose latest user row is expired (and not), and keys with no history at all."""
    rows = repo.user_rows
    tied = rows[rows.duplicated(["uid", "ts"], keep=False)]
    assert tied.groupby(["uid", "ts"]).ngroups > 200
    first_in_file = tied.groupby(["uid", "ts"]).head(1).set_index(["uid", "ts"])["created"]
    newest = tied.groupby(["uid", "ts"])["created"].max()
    assert (first_in_file.reindex(newest.index) != newest).sum() > 50

    entity = _entity_rows(repo)
    got = _historical(repo.store(ours), entity, ALL_FEATURES, full_feature_names=True).to_df()
    latest = pd.merge_asof(
        entity.dropna(subset=["user_id"]).sort_values("event_timestamp"),
        rows.rename(columns={"uid": "user_id"}).sort_values("ts")[["user_id", "ts"]],
        left_on="event_timestamp",
        right_on="ts",
        by="user_id",
    ).set_index("row_id")
    age = latest["event_timestamp"] - latest["ts"]
    assert (age > USER_TTL).sum() > 50  # expired: nulls from the ttl
    assert (age == USER_TTL).sum() >= 30  # exactly at the bound: kept
    assert latest["ts"].isna().sum() > 50  # no history (u30..u39) or none yet
    expired = got.set_index("row_id").loc[age[age > USER_TTL].index]
    assert expired[["user_stats__x", "user_stats__n", "user_stats__s"]].isna().all().all()
    assert got["zero_ttl__z"].notna().sum() > len(got) // 2  # a zero ttl is no limit


# -- semantics by hand, independent of Feast ---------------------------------------------------------------------


def test_hand_checked_rows(repo: Repo, ours: str) -> None:
    """A tie read back by hand: its newest created value from its own time to the ttl's bound, inclusive; the
    row before it just before; nulls a microsecond past the bound."""
    rows = repo.user_rows
    tied = rows[rows.duplicated(["uid", "ts"], keep=False)][["uid", "ts"]].drop_duplicates()
    gaps = _before_gaps(rows).merge(tied)
    uid, ts = gaps.iloc[0]["uid"], gaps.iloc[0]["ts"]
    group = rows[(rows["uid"] == uid) & (rows["ts"] == ts)]
    assert len(group) > 1
    newest = group.loc[group["created"].idxmax(), "s"]
    us = timedelta(microseconds=1)
    stamps = [ts - us, ts, ts + us, ts + USER_TTL, ts + USER_TTL + us]
    entity = pd.DataFrame({"user_id": uid, "event_timestamp": pd.Series(stamps)})
    got = _historical(repo.store(ours), entity, USER_FEATURES).to_df()
    assert got["event_timestamp"].tolist() == stamps
    assert got["s"].iloc[0] != newest
    assert got["s"].iloc[1:4].tolist() == [newest] * 3
    assert pd.isna(got["s"].iloc[4])


@pytest.mark.parametrize("offline_store", ["asof", "spark"])
def test_the_models_feature_service_gives_feasts_frame(tmp_path: Path, offline_store: str) -> None:
    """The project's own definitions (stream views whose batch sources are the backfill's Parquet tables) and
    fraud_model_v1, on a small backfilled history; label rows as training makes them, plus some past the ttl."""
    from streamscore.features import backfill, load_plans, rules_for
    from streamscore.generator import GeneratorConfig, write_parquet
    from streamscore.store import apply_definitions, feature_store

    settings = Settings(data_dir=tmp_path, metrics_port=0, training={"offline_store": offline_store})
    apply_definitions(settings)
    config = GeneratorConfig(events=3_000, rate=0.5, seed=5, users=100, merchants=30, start=T0)
    end = T0 + timedelta(seconds=config.events / config.rate)
    write_parquet(config, tmp_path / "events.parquet")
    plans = load_plans(settings)
    backfill(
        tmp_path / "events.parquet", plans, tmp_path / "offline", start=T0, end=end, rules=rules_for(settings, plans)
    )
    events = pd.read_parquet(tmp_path / "events.parquet")
    stamps = events["event_time"].astype("datetime64[ms, UTC]") - timedelta(milliseconds=1)
    stamps.iloc[::10] += timedelta(days=2, hours=1)  # a tenth after every view's ttl (2 days) has run out
    entity = pd.DataFrame(
        {
            "row_id": np.arange(len(events)),
            "user_id": events["user_id"],
            "merchant_id": events["merchant_id"],
            "event_timestamp": stamps,
        }
    )
    feasts = settings.model_copy(update={"training": settings.training.model_copy(update={"offline_store": "duckdb"})})
    with quiet_feast():
        service = feature_store(settings).get_feature_service("fraud_model_v1")
        ours = feature_store(settings).get_historical_features(entity_df=entity.copy(), features=service).to_df()
        theirs = feature_store(feasts).get_historical_features(entity_df=entity.copy(), features=service).to_df()
    pd.testing.assert_frame_equal(_by_row(ours), _by_row(theirs), check_exact=True)
    assert ours["user_amount_count_24h"].isna().sum() > len(ours) // 10  # expired and first transactions
    assert ours["user_amount_count_24h"].notna().sum() > len(ours) // 2


# -- the store's interface ---------------------------------------------------------------------------------------


def test_the_job_runs_an_asof_join_and_describes_itself(repo: Repo) -> None:
    entity = _entity_rows(repo, n=50)
    job = _historical(repo.store(STORE_TYPE), entity, ALL_FEATURES, full_feature_names=True)
    assert "ASOF LEFT JOIN" in job.to_sql()
    assert job.full_feature_names is True
    assert job.on_demand_feature_views == []
    assert job.metadata.features == ALL_FEATURES
    assert job.metadata.keys == [c for c in entity.columns if c != "event_timestamp"]
    assert job.metadata.min_event_timestamp == entity["event_timestamp"].min().to_pydatetime()
    assert job.metadata.max_event_timestamp == entity["event_timestamp"].max().to_pydatetime()
    feasts = _historical(repo.store("duckdb"), entity, ALL_FEATURES, full_feature_names=True)
    assert job.to_arrow().schema == feasts.to_arrow().schema


def test_the_spark_job_describes_itself_and_runs_once(repo: Repo) -> None:
    entity = _entity_rows(repo, n=50)
    job = _historical(repo.store(SPARK_STORE_TYPE), entity, ALL_FEATURES, full_feature_names=True)
    assert job.full_feature_names is True
    assert job.on_demand_feature_views == []
    assert job.metadata.features == ALL_FEATURES
    assert job.metadata.keys == [c for c in entity.columns if c != "event_timestamp"]
    assert job.metadata.min_event_timestamp == entity["event_timestamp"].min().to_pydatetime()
    feasts = _historical(repo.store("duckdb"), entity, ALL_FEATURES, full_feature_names=True)
    assert job.to_arrow() is job.to_arrow()  # joined once, on first use
    assert job.to_arrow().schema == feasts.to_arrow().schema


def test_the_callers_entity_frame_is_left_alone(repo: Repo, ours: str) -> None:
    entity = _entity_rows(repo, n=20)
    entity["event_timestamp"] = entity["event_timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    before = entity.copy()
    with quiet_feast():
        job = repo.store(ours).get_historical_features(entity_df=entity, features=USER_FEATURES)
        entity.loc[0, "user_id"] = "changed after the call"  # a lazy job must have taken its own copy
        got = job.to_df()
    pd.testing.assert_frame_equal(got.drop(columns=USER_NAMES), before.assign(event_timestamp=got["event_timestamp"]))
    entity.loc[0, "user_id"] = before.loc[0, "user_id"]
    pd.testing.assert_frame_equal(entity, before)


def test_persist_writes_the_frame(repo: Repo, ours: str, tmp_path: Path) -> None:
    from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

    entity = _entity_rows(repo, n=100)
    job = _historical(repo.store(ours), entity, ALL_FEATURES)
    job.persist(SavedDatasetFileStorage(path=str(tmp_path / "saved.parquet")))
    pd.testing.assert_frame_equal(_by_row(pd.read_parquet(tmp_path / "saved.parquet")), _by_row(job.to_df()))


def test_an_sql_entity_frame_is_refused_as_feasts_store_refuses_it(repo: Repo, ours: str) -> None:
    sql = "SELECT 'u1' AS user_id, TIMESTAMPTZ '2026-03-01 01:00:00+00' AS event_timestamp"
    with quiet_feast(), pytest.raises(AttributeError):  # Feast's reads the frame's columns
        repo.store("duckdb").get_historical_features(entity_df=sql, features=USER_FEATURES)
    with quiet_feast(), pytest.raises(NotImplementedError, match="DataFrame, not as SQL"):
        repo.store(ours).get_historical_features(entity_df=sql, features=USER_FEATURES)


# -- selection ---------------------------------------------------------------------------------------------------


def test_the_settings_select_the_asof_store_by_default_and_feasts_on_request(tmp_path: Path) -> None:
    default = repo_config(Settings(data_dir=tmp_path))
    assert default.offline_store.type == STORE_TYPE
    assert isinstance(default.offline_store, AsofDuckDBOfflineStoreConfig)
    feasts = repo_config(Settings(data_dir=tmp_path, training={"offline_store": "duckdb"}))
    assert feasts.offline_store.type == "duckdb"
    assert not isinstance(feasts.offline_store, AsofDuckDBOfflineStoreConfig)
    assert isinstance(feasts.offline_store, DuckDBOfflineStoreConfig)
    spark = repo_config(
        Settings(data_dir=tmp_path, training={"offline_store": "spark"}, features={"spark_master": "local[1]"})
    )
    assert spark.offline_store.type == SPARK_STORE_TYPE
    assert isinstance(spark.offline_store, SparkOfflineStoreConfig)
    assert spark.offline_store.spark_master == "local[1]"


def test_feature_store_yaml_names_the_asof_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEAST_REGISTRY_PATH", str(tmp_path / "registry.db"))
    monkeypatch.setenv("FEAST_REDIS_CONNECTION", "127.0.0.1:6379,db=0")
    config = load_repo_config(REPO_PATH, REPO_PATH / "feature_store.yaml")
    assert config.offline_store.type == STORE_TYPE
    assert isinstance(config.offline_store, AsofDuckDBOfflineStoreConfig)
