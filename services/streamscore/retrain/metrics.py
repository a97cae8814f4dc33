"""The retrainer's Prometheus metrics (dashboards and `top` read these names)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["DECISIONS", "LAST_DECISION", "STREAK"]

DECISIONS = Counter(
    "streamscore_retrain_decisions",
    "Retrain steps taken, by outcome: triggered, promoted, rejected, failed",
    ["decision"],
)
LAST_DECISION = Gauge(
    "streamscore_retrain_last_decision_timestamp_seconds", "When each kind of retrain step last happened", ["decision"]
)
STREAK = Gauge(
    "streamscore_retrain_drift_streak",
    "Drifted reports in a row about the serving champion (retrains at the policy's count)",
)
