"""Statistical sanity on ~50k events: loose bounds that a realistic stream passes with a wide margin and
that a uniform, flat or label-free generator fails."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from streamscore.generator import GeneratorConfig, generate_frame

# 50k events at a mean 0.6/s cover a little under one day from midnight: every hour is seen once.
CONFIG = GeneratorConfig(events=50_000, users=1000, merchants=200, seed=11, rate=0.6, fraud_rate=0.02)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_frame(CONFIG)


@pytest.fixture(scope="module")
def ordinary(frame) -> pd.DataFrame:
    return frame[~frame["is_fraud"]]


@pytest.fixture(scope="module")
def fraud(frame) -> pd.DataFrame:
    return frame[frame["is_fraud"]]


def test_values_are_in_their_domains(frame):
    assert frame["event_id"].is_unique
    assert set(frame["channel"]) <= {"POS", "ECOM", "ATM", "MOTO"}
    assert frame["country"].str.fullmatch("[A-Z]{2}").all()
    assert frame["currency"].str.fullmatch("[A-Z]{3}").all()
    assert (frame["amount"] > 0).all()
    assert np.allclose(frame["amount"], frame["amount"].round(2))
    assert frame["event_time"].min() >= CONFIG.start
    # Within a country one currency (the local one).
    assert (frame.groupby("country")["currency"].nunique() == 1).all()


def test_fraud_fraction_is_near_the_configured_rate(frame):
    assert frame["is_fraud"].mean() == pytest.approx(CONFIG.fraud_rate, rel=0.1)


def test_amounts_are_heavy_tailed(ordinary):
    assert ordinary["amount"].quantile(0.99) / ordinary["amount"].median() > 6


def test_merchant_popularity_is_skewed(frame):
    counts = frame["merchant_id"].value_counts()
    assert counts.head(len(counts) // 10).sum() / counts.sum() > 0.35


def test_user_activity_is_skewed(frame):
    counts = frame["user_id"].value_counts()
    assert counts.head(len(counts) // 10).sum() / counts.sum() > 0.25


def test_users_are_creatures_of_habit(ordinary):
    # Most of a user's purchases go to a few favourite merchants in one country.
    per_user = ordinary.groupby("user_id")
    top_merchants = per_user["merchant_id"].agg(lambda s: s.value_counts().head(3).sum() / len(s))
    top_country = per_user["country"].agg(lambda s: s.value_counts().iloc[0] / len(s))
    heavy = per_user.size() >= 20
    assert top_merchants[heavy].median() > 0.5
    assert top_country[heavy].median() > 0.8


def test_diurnal_cycle(frame):
    hours = frame["event_time"].dt.hour
    night = hours.between(1, 4).sum()
    afternoon = hours.between(13, 16).sum()
    assert afternoon > 2.5 * night


def test_fraud_comes_in_fast_bursts_at_unusual_merchants(ordinary, fraud):
    gaps = fraud.sort_values("event_time").groupby("user_id")["event_time"].diff().dropna()
    assert gaps.median() < pd.Timedelta(minutes=2)
    assert fraud.groupby("user_id").size().min() >= 3
    usual = set(zip(ordinary["user_id"], ordinary["merchant_id"], strict=True))
    seen_before = [pair in usual for pair in zip(fraud["user_id"], fraud["merchant_id"], strict=True)]
    assert np.mean(seen_before) < 0.1
    assert (fraud["channel"] == "ECOM").mean() > (ordinary["channel"] == "ECOM").mean() + 0.2
    assert fraud["amount"].median() > 1.5 * ordinary["amount"].median()


def test_drift_shifts_amounts_channels_and_merchants():
    drift_at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    frame = generate_frame(GeneratorConfig(events=30_000, seed=3, rate=0.5, fraud_rate=0.0, drift_at=drift_at))
    after = frame["event_time"] >= drift_at
    before, later = frame[~after], frame[after]
    assert len(before) > 5000
    assert len(later) > 5000
    assert later["amount"].mean() > 1.8 * before["amount"].mean()
    assert later["amount"].median() > 1.8 * before["amount"].median()
    assert (later["channel"] == "ECOM").mean() > (before["channel"] == "ECOM").mean() + 0.2
    newcomers = ~later["merchant_id"].isin(set(before["merchant_id"]))
    assert newcomers.mean() > 0.2
    # The country mix moves too (new cross-border merchants).
    shift = (later["country"].value_counts(normalize=True) - before["country"].value_counts(normalize=True)).abs()
    assert shift.sum() > 0.2
