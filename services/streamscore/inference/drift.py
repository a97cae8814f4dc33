"""Drift monitoring for one scoring worker: live inputs and scores against the model's reference profile.

The reference is the ``profile.json`` stored with each model version (:func:`streamscore.models.build_profile`):
per column, interior quantile ``edges`` with the reference share of rows per bin, 101 ``percentiles`` and a
``missing_rate``. A :class:`DriftMonitor` sits in the scoring loop and is fed every scored batch; every so
often the worker calls :meth:`DriftMonitor.report` and publishes the ``DriftReport`` record it returns
(``schemas/drift_report.avsc``).

What is computed, and why:

* **PSI** per input and for the score, from exact per-window bin counts against the profile's edges. Counting
  is one numba pass over the batch, so it costs a fraction of a microsecond per row and needs no sample.
  Empty bins (on either side) are floored at :data:`PSI_EPSILON` so PSI stays finite: a bin holding 10% of
  the reference and nothing live then adds ``0.1 * ln(0.1 / 1e-4) ~= 0.69``, loud but bounded.
* **Wasserstein-1** per input and for the score, between the window's quantile function (101 percentiles of a
  uniform reservoir sample of up to ``reservoir_size`` rows, Algorithm R with a seeded RNG) and the profile's
  101 percentiles, integrated with the trapezoid rule. It is divided by the reference **std** (1 where that is
  0), Evidently's "normed" Wasserstein, so one threshold fits columns of any unit. Dividing by the IQR instead
  was tried and flagged stationary traffic: for a heavy-tailed column (an amount over the user's mean) or the
  score of a bursty fraud stream, W1 comes mostly from the tail, which the IQR does not measure and the std
  does (``tests/inference/test_drift_stream.py``: stationary 3,000-request windows reached 0.9 IQRs but
  0.2 stds; the drifted stream 1.6 to 9 IQRs and 0.5 to 0.9 stds). PSI only sees which decile a value falls
  in; W1 also sees how far the mass moved, e.g. beyond the reference maximum.
* **Missing rate** per input: the window's share of imputed values minus the reference's. Inputs are
  profiled after imputation, so a feature that goes missing shows up here rather than (only) in its bins.
  Signed: only a rise above the threshold is drift (``drifted`` means ``value > threshold``).
* **Streaming detectors** (river ADWIN by default): one on the per-batch *mean* score, fed by
  :meth:`DriftMonitor.observe`, and one on the per-batch error rate, fed by
  :meth:`DriftMonitor.observe_labels` when delayed labels arrive. A detector update costs microseconds, so it
  gets one aggregate per batch, not a value per row. The mean score is fed *standardised*, as
  ``(batch mean - reference mean) / reference std``: ADWIN's cut bound has a term that assumes values span
  [0, 1], and raw batch means of a fraud score move by hundredths, so ADWIN missed even a 5-sigma shift
  over 100 batches; in reference-std units it fires within ~100 batches of a 0.3-std shift and stayed quiet
  over 1,000 stationary batches (5 seeds, batch 256). The error rate is fed raw (there is no reference for
  it), so its detector only notices large changes (a 5% -> 25% error rate: yes; 2% -> 4%: not reliably).
  Detectors outlive windows; a report says whether each fired within its window and how often since the
  worker started.

Batch statistics are p-value-free distances with thresholds: at thousands of rows a window every test
rejects, while PSI and W1 measure how much the distribution moved. Below ``min_count`` rows no batch
statistic is flagged (their values are still reported) because the sampling noise of PSI alone is about
``(bins - 1) / count``. Reports are per worker, per window ``[window_start, window_end)``; windows are
contiguous, each starting where the previous report ended.

Inputs are expected finite (the scorer substitutes defaults for missing values). A NaN lands in the top
PSI bin, as :func:`numpy.searchsorted` would put it, and makes that column's W1 NaN (not flagged).

A monitor is not thread-safe: one per worker, called from its scoring loop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypedDict, TypeVar, cast

import numpy as np
import numpy.typing as npt
from numba import njit
from river.drift import ADWIN, PageHinkley

__all__ = [
    "PERCENTILE_LEVELS",
    "PSI_EPSILON",
    "SCORE",
    "DetectorState",
    "DriftMonitor",
    "DriftReport",
    "FeatureDrift",
    "compile_kernels",
    "psi",
    "wasserstein1",
]

#: Floor applied to both the live and the reference share of each bin before the PSI log ratio.
PSI_EPSILON: Final = 1e-4
#: The profile's percentile levels (0, 1, ..., 100), the grid W1 is integrated on.
PERCENTILE_LEVELS: Final = np.linspace(0.0, 100.0, 101)
#: Name of the model output in the profile and in reports.
SCORE: Final = "score"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_F = TypeVar("_F", bound=Callable[..., Any])

DetectorKind = Literal["adwin", "page_hinkley"]


class FeatureDrift(TypedDict):
    """One batch statistic of one column (``FeatureDrift`` in the Avro schema)."""

    feature: str
    statistic: str
    value: float
    threshold: float
    drifted: bool


class DetectorState(TypedDict):
    """One streaming detector at the end of a window (``DetectorState`` in the Avro schema)."""

    name: str
    stream: str
    drift_detected: bool
    n_detections: int


class DriftReport(TypedDict):
    """The ``DriftReport`` Avro record; timestamps are tz-aware UTC datetimes, as the serde decodes them."""

    model_name: str
    model_version: str
    worker: str
    window_start: datetime
    window_end: datetime
    count: int
    features: list[FeatureDrift]
    detectors: list[DetectorState]
    drifted: bool


def _jit(fn: _F) -> _F:
    """``numba.njit`` that keeps the kernel's static signature (numba ships no type information)."""
    return cast(_F, njit(cache=True, nogil=True)(fn))


@_jit
def _accumulate(
    x: npt.NDArray[np.floating[Any]],
    missing: npt.NDArray[np.bool_],
    scores: npt.NDArray[np.floating[Any]],
    edges: npt.NDArray[np.float64],
    n_edges: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    missing_counts: npt.NDArray[np.int64],
    reservoir: npt.NDArray[np.float64],
    seen: int,
    draws: npt.NDArray[np.float64],
) -> float:
    """Add one batch to the window: bin counts, missing counts and the reservoir; returns the score sum.

    Column ``F`` (one past the inputs) is the score. Bins follow ``np.searchsorted(edges, v, side="right")``
    (the profile's convention): bin ``b`` holds ``edges[b-1] <= v < edges[b]``. Reservoir row ``seen + i``
    either fills a free slot or replaces slot ``floor(draws[i] * (seen + i + 1))`` when that is a slot
    (Algorithm R), so every row of the window is kept with the same probability.
    """
    n, f = x.shape
    cap = reservoir.shape[0]
    total = 0.0
    for i in range(n):
        s = scores[i]
        total += s
        for c in range(f + 1):
            v = x[i, c] if c < f else s
            # Branch-free count of edges <= v: with ~10 bins a linear pass beats a binary search, whose
            # data-dependent branches mispredict on about every other level on live data.
            hi = n_edges[c]
            lo = 0
            for e in range(hi):
                lo += edges[c, e] <= v
            if v != v:  # NaN sorts last in numpy
                lo = hi
            counts[c, lo] += 1
        for c in range(f):
            if missing[i, c]:
                missing_counts[c] += 1
        r = seen + i
        slot = r if r < cap else int(draws[i] * (r + 1))
        if slot < cap:
            for c in range(f):
                reservoir[slot, c] = x[i, c]
            reservoir[slot, f] = s
    return float(total)


def compile_kernels() -> None:
    """Compile (or load from numba's cache) the counting kernel now, so the first scored batch does not wait."""
    one = np.zeros((1, 1), dtype=np.float32)
    _accumulate(
        one, np.zeros((1, 1), dtype=np.bool_), np.zeros(1, dtype=np.float32), np.zeros((2, 1)),
        np.ones(2, dtype=np.int64), np.zeros((2, 2), dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros((1, 2)),
        0, np.zeros(1),
    )  # fmt: skip


def psi(counts: npt.ArrayLike, expected: npt.ArrayLike, *, eps: float = PSI_EPSILON) -> float:
    """Population stability index of live bin ``counts`` against reference bin fractions ``expected``.

    ``sum((a - e) * ln(a / e))`` over bins, with both shares floored at ``eps`` so an empty bin adds a
    bounded amount instead of infinity. NaN when there are no counts: an empty window has no distribution.
    """
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return math.nan
    a = np.maximum(c / total, eps)
    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def wasserstein1(live: npt.ArrayLike, reference: npt.ArrayLike) -> npt.NDArray[np.float64] | float:
    """Wasserstein-1 distance between two quantile functions sampled on the same evenly spaced levels.

    ``W1 = integral over p in [0, 1] of |F^-1(p) - G^-1(p)|``; with quantiles at ``len`` levels from 0 to 1
    (axis 0), the trapezoid rule. Extra axes are columns; a scalar comes back for 1-D input.
    """
    diff = np.abs(np.asarray(live, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    w = np.trapezoid(diff, dx=1.0 / (diff.shape[0] - 1), axis=0)
    return float(w) if np.ndim(w) == 0 else np.asarray(w, dtype=np.float64)


def _make_detector(detector: DetectorKind | Callable[[], Any]) -> tuple[str, Any]:
    if callable(detector):
        made = detector()
        return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", type(made).__name__).lower(), made  # PageHinkley: page_hinkley
    if detector == "adwin":
        return "adwin", ADWIN()  # type: ignore[no-untyped-call]  # river leaves ADWIN.__init__ unannotated
    if detector == "page_hinkley":
        return "page_hinkley", PageHinkley()
    raise ValueError(f"unknown detector {detector!r}: expected 'adwin', 'page_hinkley' or a factory")


class _Tracked:
    """A river detector plus the bookkeeping a report needs (river only exposes the latest flag)."""

    __slots__ = ("detector", "fired", "n_detections", "name", "stream")

    def __init__(self, name: str, stream: str, detector: Any) -> None:
        self.name = name
        self.stream = stream
        self.detector = detector
        self.fired = False
        self.n_detections = 0

    def update(self, value: float) -> None:
        self.detector.update(value)
        if self.detector.drift_detected:
            self.n_detections += 1
            self.fired = True

    def state(self) -> DetectorState:
        return {
            "name": self.name,
            "stream": self.stream,
            "drift_detected": self.fired,
            "n_detections": self.n_detections,
        }


class DriftMonitor:
    """Per-worker window of live inputs and scores, compared with one model version's reference profile.

    ``features`` is the input matrix's column order (``ModelCard.features``); the profile must hold each of
    them and ``"score"``. Thresholds: ``psi_threshold`` on PSI; ``wasserstein_threshold`` on W1 in units of
    the reference std; ``missing_rate_threshold`` on the rise of the missing rate.
    ``detector`` picks the river detector for the score and error streams ("adwin", "page_hinkley", or a
    factory returning a fresh river drift detector). The score detector sees batch means in reference-std
    units, so a factory's thresholds (PageHinkley's ``delta``, ``threshold``) are in those units; the error
    detector sees raw rates in [0, 1]. ``decision_threshold`` turns scores into decisions for the error rate
    (``ModelCard.threshold``). ``start_ms`` opens the first window; by default the first batch does.
    """

    def __init__(
        self,
        profile: Mapping[str, Any],
        features: Sequence[str],
        *,
        model_name: str,
        model_version: str,
        worker: str,
        psi_threshold: float = 0.2,
        wasserstein_threshold: float = 0.25,
        missing_rate_threshold: float = 0.1,
        min_count: int = 200,
        detector: DetectorKind | Callable[[], Any] = "adwin",
        decision_threshold: float = 0.5,
        reservoir_size: int = 2000,
        seed: int = 0,
        start_ms: int | None = None,
    ) -> None:
        columns: Mapping[str, Any] = profile.get("columns", {})
        names = [*features, SCORE]
        lacking = [name for name in names if name not in columns]
        if lacking:
            raise ValueError(f"reference profile has no column(s) {lacking}")
        if len(set(features)) != len(features) or SCORE in features:
            raise ValueError("feature names must be unique and must not include 'score'")
        if reservoir_size < 1:
            raise ValueError("reservoir_size must be at least 1")
        self.model_name = model_name
        self.model_version = model_version
        self.worker = worker
        self.features: tuple[str, ...] = tuple(features)
        self.psi_threshold = float(psi_threshold)
        self.wasserstein_threshold = float(wasserstein_threshold)
        self.missing_rate_threshold = float(missing_rate_threshold)
        self.min_count = int(min_count)
        self.decision_threshold = float(decision_threshold)

        n_cols = len(names)
        n_edges = np.array([len(columns[name]["edges"]) for name in names], dtype=np.int64)
        self._edges = np.full((n_cols, max(1, int(n_edges.max()))), np.inf, dtype=np.float64)
        self._fractions: list[npt.NDArray[np.float64]] = []
        quantiles = np.empty((len(PERCENTILE_LEVELS), n_cols), dtype=np.float64)
        self._scale = np.empty(n_cols, dtype=np.float64)
        for c, name in enumerate(names):
            col = columns[name]
            edges = np.asarray(col["edges"], dtype=np.float64)
            fractions = np.asarray(col["fractions"], dtype=np.float64)
            pct = np.asarray(col["percentiles"], dtype=np.float64)
            if fractions.shape != (len(edges) + 1,) or pct.shape != PERCENTILE_LEVELS.shape:
                raise ValueError(f"profile column {name!r}: need len(edges) + 1 fractions and 101 percentiles")
            self._edges[c, : len(edges)] = edges
            self._fractions.append(fractions)
            quantiles[:, c] = pct
            std = float(col.get("std", 0.0))
            self._scale[c] = std if std > 0 else 1.0
        self._n_edges = n_edges
        self._ref_quantiles = quantiles
        self._ref_missing = np.array([float(columns[f].get("missing_rate", 0.0)) for f in features])
        score_std = float(columns[SCORE].get("std", 0.0))
        self._score_mean = float(columns[SCORE].get("mean", 0.0))
        self._score_std = score_std if score_std > 0 else 1.0

        self._counts = np.zeros((n_cols, self._edges.shape[1] + 1), dtype=np.int64)
        self._missing_counts = np.zeros(len(features), dtype=np.int64)
        self._reservoir = np.empty((reservoir_size, n_cols), dtype=np.float64)
        self._count = 0
        self._rng = np.random.default_rng(seed)
        self._window_start = start_ms

        name, made = _make_detector(detector)
        self._score_detector = _Tracked(name, SCORE, made)
        name, made = _make_detector(detector)
        self._error_detector = _Tracked(name, "error_rate", made)

    @property
    def count(self) -> int:
        """Rows observed in the current window."""
        return self._count

    def observe(
        self,
        x: npt.NDArray[np.floating[Any]],
        missing: npt.NDArray[np.bool_],
        scores: npt.NDArray[np.floating[Any]],
        now_ms: int,
    ) -> None:
        """Add one scored batch: ``x`` [N, F] as the model got it, ``missing`` [N, F] imputed flags, ``scores``.

        One numba pass (bin counts, missing counts, reservoir) and one detector update with the batch mean
        score in reference-std units; no copies when the arrays are C-contiguous already.
        """
        x = np.ascontiguousarray(x)
        missing = np.ascontiguousarray(missing, dtype=np.bool_)
        scores = np.ascontiguousarray(scores).reshape(-1)
        n = int(x.shape[0])
        if x.ndim != 2 or x.shape[1] != len(self.features) or missing.shape != x.shape or scores.shape != (n,):
            raise ValueError(
                f"expected x and missing [N, {len(self.features)}] and scores [N]; got {x.shape}, "
                f"{missing.shape}, {scores.shape}"
            )
        if self._window_start is None:
            self._window_start = int(now_ms)
        if n == 0:
            return
        draws = self._rng.random(n)
        total = _accumulate(
            x, missing, scores, self._edges, self._n_edges, self._counts, self._missing_counts, self._reservoir,
            self._count, draws,
        )  # fmt: skip
        self._count += n
        self._score_detector.update((total / n - self._score_mean) / self._score_std)

    def observe_labels(self, scores: npt.ArrayLike, labels: npt.ArrayLike) -> None:
        """Feed the error detector the error rate of one batch of delayed labels (decisions at
        ``decision_threshold``): a model can go stale with inputs that look unchanged."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        y = np.asarray(labels).reshape(-1).astype(np.bool_)
        if s.shape != y.shape:
            raise ValueError(f"{s.size} scores but {y.size} labels")
        if s.size:
            self._error_detector.update(float(np.mean((s >= self.decision_threshold) != y)))

    def report(self, now_ms: int) -> DriftReport:
        """The ``DriftReport`` for the window ``[start, now_ms)``; then a new window opens at ``now_ms``.

        Detectors keep their state across windows; statistics of an empty window are NaN.
        """
        count = self._count
        gated = count >= self.min_count
        features: list[FeatureDrift] = []

        def entry(feature: str, statistic: str, value: float, threshold: float) -> None:
            features.append(
                {
                    "feature": feature,
                    "statistic": statistic,
                    "value": float(value),
                    "threshold": threshold,
                    "drifted": bool(gated and value > threshold),
                }
            )

        if count:
            live_q = np.percentile(self._reservoir[: min(count, self._reservoir.shape[0])], PERCENTILE_LEVELS, axis=0)
            w1 = np.asarray(wasserstein1(live_q, self._ref_quantiles)) / self._scale
            missing_delta = self._missing_counts / count - self._ref_missing
        else:
            w1 = np.full(len(self._scale), math.nan)
            missing_delta = np.full(len(self.features), math.nan)
        for c, name in enumerate((*self.features, SCORE)):
            counts = self._counts[c, : self._n_edges[c] + 1]
            entry(name, "psi", psi(counts, self._fractions[c]), self.psi_threshold)
            entry(name, "wasserstein", float(w1[c]), self.wasserstein_threshold)
            if c < len(self.features):
                entry(name, "missing_rate", float(missing_delta[c]), self.missing_rate_threshold)

        detectors = [self._score_detector.state(), self._error_detector.state()]
        start = now_ms if self._window_start is None else self._window_start
        report: DriftReport = {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "worker": self.worker,
            "window_start": _EPOCH + timedelta(milliseconds=int(start)),
            "window_end": _EPOCH + timedelta(milliseconds=int(now_ms)),
            "count": count,
            "features": features,
            "detectors": detectors,
            "drifted": any(f["drifted"] for f in features) or any(d["drift_detected"] for d in detectors),
        }
        self._reset(now_ms)
        return report

    def _reset(self, now_ms: int) -> None:
        self._counts[:] = 0
        self._missing_counts[:] = 0
        self._count = 0
        self._window_start = int(now_ms)
        self._score_detector.fired = False
        self._error_detector.fired = False
