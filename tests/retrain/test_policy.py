"""The retrain policy as a pure function of the reports it sees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from streamscore.retrain.policy import DriftPolicy, drifted_features
from streamscore.settings import RetrainSettings

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)


def report(i: int, *drifted: str, version: str = "1", span_s: float = 10.0, worker: str = "w0") -> dict[str, Any]:
    features = [{"feature": f, "statistic": "psi", "value": 0.5, "threshold": 0.2, "drifted": True} for f in drifted]
    features.append({"feature": "quiet", "statistic": "psi", "value": 0.01, "threshold": 0.2, "drifted": False})
    start = T0 + timedelta(seconds=i * span_s)
    return {"model_version": version, "worker": worker, "window_start": start,
            "window_end": start + timedelta(seconds=span_s), "features": features}  # fmt: skip


def policy(**overrides: Any) -> DriftPolicy:
    return DriftPolicy(RetrainSettings(**{"min_reports": 3, "cooldown_s": 100.0, **overrides}))


def test_a_streak_of_drifted_reports_triggers_once_it_is_long_enough() -> None:
    p = policy()
    assert p.observe(report(0, "amount"), "1", 0) is None
    assert p.observe(report(1, "amount", "channel"), "1", 1) is None
    trigger = p.observe(report(2, "channel"), "1", 2)
    assert trigger is not None
    assert (trigger.reports, trigger.features, trigger.model_version) == (3, ("amount", "channel"), "1")
    assert trigger.first_window_start == T0
    assert trigger.last_window_end == T0 + timedelta(seconds=30)
    assert "3 drifted reports in a row about v1 from worker w0 over 30s" in trigger.describe()
    assert p.streak == 0


def test_a_quiet_report_breaks_the_streak() -> None:
    p = policy()
    p.observe(report(0, "amount"), "1", 0)
    p.observe(report(1, "amount"), "1", 1)
    assert p.observe(report(2), "1", 2) is None
    assert p.streak == 0
    assert p.observe(report(3, "amount"), "1", 3) is None


def test_reports_about_another_version_are_ignored() -> None:
    p = policy()
    for i in range(5):
        assert p.observe(report(i, "amount", version="1"), "2", i) is None
    assert p.observe(report(9, "amount"), None, 9) is None  # no champion at all
    assert p.streak == 0


def test_too_few_drifted_inputs_do_not_count() -> None:
    p = policy(min_drifted_features=2)
    for i in range(5):
        assert p.observe(report(i, "amount"), "1", i) is None
    assert p.observe(report(5, "amount", "channel"), "1", 5) is None
    assert p.streak == 1


def test_the_streak_must_span_the_minimum_duration() -> None:
    p = policy(min_duration_s=45.0)
    assert [p.observe(report(i, "amount"), "1", i) for i in range(4)][-1] is None  # 40 s so far
    assert p.observe(report(4, "amount"), "1", 4) is not None  # 50 s


def test_cooldown_holds_off_the_next_trigger() -> None:
    p = policy()
    p.cooldown(now=10.0)
    for i in range(5):
        assert p.observe(report(i, "amount"), "1", 10.0 + i) is None
    assert p.observe(report(5, "amount"), "1", 111.0) is not None


def test_drifted_features_lists_each_input_once() -> None:
    r = report(0, "amount", "channel")
    r["features"].append({"feature": "amount", "statistic": "wasserstein", "value": 1.0, "threshold": 0.25,
                          "drifted": True})  # fmt: skip
    assert drifted_features(r) == ["amount", "channel"]


def test_streaks_are_per_worker() -> None:
    # Three workers flagging the same window are one observation, not three in a row.
    p = policy()
    assert all(p.observe(report(0, "amount", worker=w), "1", 0) is None for w in ("a", "b", "c"))
    assert p.streak == 1
    # A quiet report from a worker with little traffic does not break another worker's streak.
    assert p.observe(report(1, "amount", worker="a"), "1", 1) is None
    assert p.observe(report(1, worker="b"), "1", 1) is None
    trigger = p.observe(report(2, "amount", worker="a"), "1", 2)
    assert trigger is not None
    assert trigger.worker == "a"
    assert p.streak == 0  # a retrain starts every streak afresh


def test_a_report_sent_again_does_not_count_twice() -> None:
    """A worker re-sends its reports when a batch is retried after a partial delivery, and the retrainer reads
    reports again after a failed commit: the same window twice is one observation."""
    p = policy()
    p.observe(report(0, "amount"), "1", 0)
    assert p.observe(report(1, "amount"), "1", 1) is None
    assert p.observe(report(1, "amount"), "1", 2) is None
    assert p.observe(report(0, "amount"), "1", 3) is None
    assert p.streak == 2
    assert p.observe(report(2, "amount"), "1", 4) is not None
