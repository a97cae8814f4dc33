"""One batch of score requests in, one score per request out: online features, request features, defaults,
one ONNX Runtime call.

Kept apart from Kafka so the arithmetic a prediction rests on can be tested without a broker: the worker
decodes, calls :meth:`Scorer.score`, and publishes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamscore.features.request import request_features
from streamscore.models.runtime import ModelLoadError, ScoringSession
from streamscore.store.reader import OnlineReader

__all__ = ["ScoredBatch", "Scorer"]


@dataclass(frozen=True)
class ScoredBatch:
    """Row ``i`` answers request ``i``."""

    scores: npt.NDArray[np.float32]
    decisions: npt.NDArray[np.bool_]
    inputs: npt.NDArray[np.float32]  # what the model got, defaults filled in
    missing: npt.NDArray[np.bool_]  # [N, F]: imputed inputs
    missing_names: list[list[str]]  # the same, as names, for the prediction record
    out_of_range: list[list[str]]  # inputs far outside the training data's range (see Scorer)
    freshness_ms: npt.NDArray[np.int64]  # age of the oldest stored feature used; -1 when none was
    features_ms: float
    inference_ms: float

    @classmethod
    def concat(cls, batches: Sequence[ScoredBatch]) -> ScoredBatch:
        """Batches scored one after the other, as one (times add up)."""
        return cls(
            scores=np.concatenate([b.scores for b in batches]),
            decisions=np.concatenate([b.decisions for b in batches]),
            inputs=np.concatenate([b.inputs for b in batches]),
            missing=np.concatenate([b.missing for b in batches]),
            missing_names=[names for b in batches for names in b.missing_names],
            out_of_range=[names for b in batches for names in b.out_of_range],
            freshness_ms=np.concatenate([b.freshness_ms for b in batches]),
            features_ms=sum(b.features_ms for b in batches),
            inference_ms=sum(b.inference_ms for b in batches),
        )

    def take(self, keep: npt.NDArray[np.bool_]) -> ScoredBatch:
        """The rows where ``keep`` is true (times unchanged)."""
        rows = np.flatnonzero(keep).tolist()
        return dataclasses.replace(
            self,
            scores=self.scores[keep],
            decisions=self.decisions[keep],
            inputs=self.inputs[keep],
            missing=self.missing[keep],
            missing_names=[self.missing_names[i] for i in rows],
            out_of_range=[self.out_of_range[i] for i in rows],
            freshness_ms=self.freshness_ms[keep],
        )


class Scorer:
    """Feeds one model exactly what its card declares: store features in service order, then the request
    features, each missing value replaced by the card's default and flagged.

    An input far outside what the model was trained on (below the training minimum or above the maximum by
    more than the training range's own width, from the reference profile) is flagged too: the model
    extrapolates there, and a $1e7 purchase scored 0.0 must say so rather than look like a verdict.
    """

    def __init__(
        self,
        session: ScoringSession,
        reader: OnlineReader,
        *,
        threshold: float | None = None,
        profile: dict[str, Any] | None = None,
    ) -> None:
        card = session.card
        available = {name: j for j, name in enumerate(reader.names)}
        lacking = [f for f in card.store_features if f not in available]
        if lacking:
            raise ModelLoadError(
                f"model v{session.version} needs feature(s) {lacking} that feature service "
                f"{reader.feature_service!r} does not serve"
            )
        self.session = session
        self.reader = reader
        self.threshold = card.threshold if threshold is None else threshold
        self.features = card.features
        self._defaults = np.asarray(card.defaults, dtype=np.float64)
        self._store_columns = [(i, available[f]) for i, f in enumerate(card.features) if f in available]
        self._request_columns = [(i, f) for i, f in enumerate(card.features) if f in set(card.request_features)]
        columns = (profile or {}).get("columns", {})
        lo, hi = np.full(len(self.features), -np.inf), np.full(len(self.features), np.inf)
        for i, name in enumerate(self.features):
            if name in columns:
                low, high = float(columns[name]["min"]), float(columns[name]["max"])
                lo[i], hi[i] = low - (high - low), high + (high - low)
        self._lo, self._hi = lo, hi

    def score(self, requests: Sequence[dict[str, Any]], now_ms: int) -> ScoredBatch:
        n = len(requests)
        started = time.perf_counter()
        online = self.reader.read(
            {"user_id": [r["user_id"] for r in requests], "merchant_id": [r["merchant_id"] for r in requests]}
        )
        features_ms = (time.perf_counter() - started) * 1e3
        raw = np.empty((n, len(self.features)), dtype=np.float64)
        for i, j in self._store_columns:
            raw[:, i] = online.values[:, j]
        store = {name: online.values[:, j] for j, name in enumerate(online.names)}
        amount = np.fromiter((r["amount"] for r in requests), dtype=np.float64, count=n)
        channel = np.array([r["channel"] for r in requests], dtype=object)
        extra = request_features(amount, channel, store)
        for i, name in self._request_columns:
            raw[:, i] = extra[name]
        missing = np.isnan(raw)
        inputs = np.where(missing, self._defaults[None, :], raw).astype(np.float32)
        started = time.perf_counter()
        scores = self.session.predict(inputs)
        inference_ms = (time.perf_counter() - started) * 1e3
        written = np.where(online.event_ms >= 0, online.event_ms, np.iinfo(np.int64).max).min(axis=1)
        freshness = np.where(written == np.iinfo(np.int64).max, -1, np.maximum(now_ms - written, 0))
        names: list[list[str]] = [[] for _ in range(n)]
        for row in np.flatnonzero(missing.any(axis=1)):
            names[row] = [self.features[j] for j in np.flatnonzero(missing[row])]
        outside = (raw < self._lo) | (raw > self._hi)  # NaN (missing) compares False
        far: list[list[str]] = [[] for _ in range(n)]
        for row in np.flatnonzero(outside.any(axis=1)):
            far[row] = [self.features[j] for j in np.flatnonzero(outside[row])]
        return ScoredBatch(
            scores=scores,
            decisions=scores >= self.threshold,
            inputs=inputs,
            missing=missing,
            missing_names=names,
            out_of_range=far,
            freshness_ms=freshness.astype(np.int64),
            features_ms=features_ms,
            inference_ms=inference_ms,
        )
