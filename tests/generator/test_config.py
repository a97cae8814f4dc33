"""GeneratorConfig validates at construction, and the package exports exactly its intended names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streamscore.generator import GeneratorConfig


def test_defaults():
    config = GeneratorConfig(events=10)
    assert (config.users, config.merchants, config.seed, config.rate) == (1000, 200, 0, 100.0)
    assert config.start == datetime(2026, 1, 1, tzinfo=UTC)
    assert (config.fraud_rate, config.drift_at, config.out_of_order_rate, config.late_rate) == (0.01, None, 0.01, 0.001)


def test_is_frozen_and_keyword_only():
    config = GeneratorConfig(events=10)
    with pytest.raises(AttributeError):
        config.events = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        GeneratorConfig(10)  # type: ignore[misc]


@pytest.mark.parametrize(
    "overrides",
    [
        {"events": -1},
        {"events": 1.5},
        {"events": True},
        {"users": 0},
        {"merchants": 0},
        {"seed": -3},
        {"rate": 0.0},
        {"rate": float("inf")},
        {"rate": float("nan")},
        {"fraud_rate": -0.1},
        {"fraud_rate": 0.6},
        {"out_of_order_rate": 1.5},
        {"late_rate": -0.01},
        {"out_of_order_rate": 0.7, "late_rate": 0.4},
        {"start": datetime(2026, 1, 1)},
        {"drift_at": datetime(2026, 1, 2)},
    ],
)
def test_rejects_bad_values(overrides):
    with pytest.raises(ValueError, match=next(iter(overrides)).split("_")[0]):
        GeneratorConfig(**{"events": 10, **overrides})
