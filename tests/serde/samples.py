"""Realistic sample records, one per schema, for tests that need a valid message.

Timestamps are timezone-aware UTC with whole milliseconds, which is exactly what decoding
returns, so ``decode(encode(r)) == r`` holds for every sample.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

_T0 = datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC)
_T1 = datetime(2024, 5, 1, 12, 30, 15, 168000, tzinfo=UTC)


def _transaction() -> dict[str, Any]:
    return {
        "event_id": "evt-000001",
        "user_id": "user-42",
        "merchant_id": "merch-7",
        "amount": 129.99,
        "currency": "EUR",
        "country": "DE",
        "channel": "ECOM",
        "event_time": _T0,
        "is_fraud": False,
    }


def _score_request() -> dict[str, Any]:
    return {
        "request_id": "req-000001",
        "user_id": "user-42",
        "merchant_id": "merch-7",
        "amount": 129.99,
        "currency": "EUR",
        "country": "DE",
        "channel": "POS",
        "request_time": _T0,
        "context": {"device_id": "dev-9", "ip": "203.0.113.7"},
    }


def _prediction() -> dict[str, Any]:
    return {
        "request_id": "req-000001",
        "user_id": "user-42",
        "score": 0.87,
        "decision": True,
        "threshold": 0.5,
        "model_name": "fraud-gbdt",
        "model_version": "3",
        "feature_freshness_ms": 1500,
        "missing_features": ["merchant_7d_chargebacks"],
        "out_of_range": ["req_amount_to_user_mean_24h"],
        "latency": {"queue_ms": 2.5, "features_ms": 1.25, "inference_ms": 0.75, "total_ms": 45.0},
        "request_time": _T0,
        "scored_at": _T1,
    }


def _drift_report() -> dict[str, Any]:
    return {
        "model_name": "fraud-gbdt",
        "model_version": "3",
        "worker": "scorer-0",
        "window_start": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "window_end": datetime(2024, 5, 1, 12, 5, tzinfo=UTC),
        "count": 12000,
        "features": [
            {"feature": "amount", "statistic": "psi", "value": 0.31, "threshold": 0.2, "drifted": True},
            {
                "feature": "user_1h_count",
                "statistic": "psi",
                "value": 0.02,
                "threshold": 0.2,
                "drifted": False,
            },
        ],
        "detectors": [
            {"name": "adwin", "stream": "score", "drift_detected": False, "n_detections": 2},
        ],
        "drifted": True,
    }


def _dead_letter() -> dict[str, Any]:
    return {
        "topic": "transactions",
        "partition": 3,
        "offset": 1_234_567,
        "stage": "decode",
        "reason": "bad-magic",
        "exception": "bad-magic: unknown framing byte 0x7b",
        "key": b"user-42",
        "value": b'{"not": "avro"}',
        "failed_at": _T1,
    }


_BUILDERS = {
    "transaction": _transaction,
    "score_request": _score_request,
    "prediction": _prediction,
    "drift_report": _drift_report,
    "dead_letter": _dead_letter,
}


def sample_record(name: str) -> dict[str, Any]:
    """A fresh (safe to mutate) valid record for the schema ``name`` in SCHEMA_NAMES."""
    try:
        return _BUILDERS[name]()
    except KeyError:
        raise KeyError(f"no sample record for schema {name!r}") from None
