"""DriftMonitor against a seeded reference: quiet on the same distribution, loud on the column that moved,
gated below min_count, detectors that fire on a level shift only, and reports the Avro serde takes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from streamscore.inference.drift import PSI_EPSILON, SCORE, DriftMonitor, DriftReport, psi, wasserstein1
from streamscore.models.profile import build_profile
from streamscore.serde import Serde

FEATURES = ("amount", "user_1h_count", "hour_sin", "ratio")
MISSING_RATE = 0.05  # of user_1h_count in the reference and in undrifted live data
N_REF = 20_000


def sample(
    rng: np.random.Generator, n: int, *, amount_scale: float = 1.0, missing_rate: float = MISSING_RATE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs as the model sees them (float32, defaults filled in), the imputed mask, and scores.

    A heavy-tailed amount, a small count (ties on the bin edges), a bounded periodic and a uniform column;
    the score is a logistic function of the inputs, so moving an input moves the score."""
    amount = rng.lognormal(3.0, 1.0, n) * amount_scale
    count = rng.poisson(2.0, n).astype(np.float64)
    hour = np.sin(rng.uniform(0, 2 * np.pi, n))
    ratio = rng.uniform(0, 1, n)
    missing = np.zeros((n, len(FEATURES)), dtype=bool)
    missing[:, 1] = rng.random(n) < missing_rate
    count[missing[:, 1]] = 0.0  # the card's default
    x = np.column_stack([amount, count, hour, ratio]).astype(np.float32)
    scores = 1.0 / (1.0 + np.exp(-(0.02 * amount + 0.3 * count - 3.0)))
    return x, missing, scores.astype(np.float32)


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    x, missing, scores = sample(np.random.default_rng(0), N_REF)
    columns = {name: x[:, j] for j, name in enumerate(FEATURES)} | {SCORE: scores}
    return build_profile(columns, {name: missing[:, j] for j, name in enumerate(FEATURES)})


def monitor(profile: dict[str, Any], **kwargs: Any) -> DriftMonitor:
    return DriftMonitor(profile, FEATURES, model_name="fraud-mlp", model_version="3", worker="scorer-0", **kwargs)


def feed(m: DriftMonitor, rng: np.random.Generator, batches: int, batch: int = 256, t0: int = 0, **kw: Any) -> int:
    """Observe ``batches`` batches one second apart; returns the time after the last one."""
    for b in range(batches):
        m.observe(*sample(rng, batch, **kw), now_ms=t0 + 1000 * b)
    return t0 + 1000 * batches


def stat(report: DriftReport, feature: str, statistic: str) -> dict[str, Any]:
    (entry,) = [f for f in report["features"] if f["feature"] == feature and f["statistic"] == statistic]
    return dict(entry)


def flagged(report: DriftReport) -> set[tuple[str, str]]:
    return {(f["feature"], f["statistic"]) for f in report["features"] if f["drifted"]}


def detector(report: DriftReport, stream: str) -> dict[str, Any]:
    (entry,) = [d for d in report["detectors"] if d["stream"] == stream]
    return dict(entry)


# -- batch statistics ------------------------------------------------------------------------------------------


def test_same_distribution_is_not_drifted(profile):
    m = monitor(profile)
    end = feed(m, np.random.default_rng(1), batches=40)
    report = m.report(end)
    assert report["count"] == 40 * 256
    assert flagged(report) == set()
    assert report["drifted"] is False
    for name in (*FEATURES, SCORE):
        assert stat(report, name, "psi")["value"] < 0.02, name
        assert stat(report, name, "wasserstein")["value"] < 0.1, name
    assert abs(stat(report, "user_1h_count", "missing_rate")["value"]) < 0.02


def test_scaled_feature_is_flagged_by_psi_and_wasserstein_and_others_are_not(profile):
    m = monitor(profile)
    end = feed(m, np.random.default_rng(2), batches=20, amount_scale=3.0)
    report = m.report(end)
    assert flagged(report) == {("amount", "psi"), ("amount", "wasserstein"), (SCORE, "psi"), (SCORE, "wasserstein")}
    assert stat(report, "amount", "psi")["value"] > 1.0
    assert report["drifted"] is True


def test_missing_rate_jump_is_flagged(profile):
    m = monitor(profile)
    end = feed(m, np.random.default_rng(3), batches=20, missing_rate=0.4)
    report = m.report(end)
    entry = stat(report, "user_1h_count", "missing_rate")
    assert entry["drifted"] is True
    assert entry["value"] == pytest.approx(0.4 - profile["columns"]["user_1h_count"]["missing_rate"], abs=0.02)
    assert all(not stat(report, f, "missing_rate")["drifted"] for f in FEATURES if f != "user_1h_count")


def test_below_min_count_nothing_is_flagged_but_values_are_reported(profile):
    rng = np.random.default_rng(4)
    x, missing, scores = sample(rng, 150, amount_scale=3.0, missing_rate=0.5)
    small = monitor(profile)  # min_count=200
    small.observe(x, missing, scores, now_ms=0)
    report = small.report(1000)
    assert report["count"] == 150
    assert flagged(report) == set()
    assert report["drifted"] is False
    assert stat(report, "amount", "psi")["value"] > 1.0  # the signal is there, only not trusted
    # The same rows over a lower min_count are flagged: the gate, not the data, kept them quiet.
    lax = monitor(profile, min_count=100)
    lax.observe(x, missing, scores, now_ms=0)
    assert {("amount", "psi"), ("user_1h_count", "missing_rate")} <= flagged(lax.report(1000))


def test_psi_matches_numpy_binning_including_values_on_edges(profile):
    """The numba counting follows np.searchsorted(side="right"): the count column has many values equal
    to an edge, so an off-by-one in the comparison changes the PSI."""
    x, missing, scores = sample(np.random.default_rng(5), 1000, amount_scale=1.5)
    m = monitor(profile)
    m.observe(x, missing, scores, now_ms=0)
    report = m.report(1)
    for j, name in enumerate((*FEATURES, SCORE)):
        col = profile["columns"][name]
        values = scores if name == SCORE else x[:, j]
        counts = np.bincount(np.searchsorted(col["edges"], values, side="right"), minlength=len(col["edges"]) + 1)
        assert stat(report, name, "psi")["value"] == pytest.approx(psi(counts, col["fractions"]), rel=1e-12), name


def test_wasserstein_is_exact_while_the_window_fits_the_reservoir(profile):
    """Under reservoir_size rows the reservoir is the window, so W1 equals the one from all rows, in stds."""
    x, missing, scores = sample(np.random.default_rng(6), 1500, amount_scale=2.0)
    m = monitor(profile, reservoir_size=2000)
    for lo in range(0, 1500, 500):
        m.observe(x[lo : lo + 500], missing[lo : lo + 500], scores[lo : lo + 500], now_ms=lo)
    report = m.report(2000)
    for j, name in enumerate((*FEATURES, SCORE)):
        ref = np.asarray(profile["columns"][name]["percentiles"])
        live = np.percentile((scores if name == SCORE else x[:, j]).astype(np.float64), np.linspace(0, 100, 101))
        expected = wasserstein1(live, ref) / profile["columns"][name]["std"]
        assert stat(report, name, "wasserstein")["value"] == pytest.approx(expected, rel=1e-9), name


def test_reservoir_sample_tracks_a_long_window(profile):
    """Past the reservoir size, rows are kept uniformly: a window whose second half is scaled must show
    about half the drift of an all-scaled one, not the drift of whichever half the sample favoured."""
    rng = np.random.default_rng(7)
    half = monitor(profile, reservoir_size=500)
    feed(half, rng, batches=20)
    feed(half, rng, batches=20, amount_scale=3.0)
    full = monitor(profile, reservoir_size=500)
    feed(full, rng, batches=40, amount_scale=3.0)
    w_half = stat(half.report(1), "amount", "wasserstein")["value"]
    w_full = stat(full.report(1), "amount", "wasserstein")["value"]
    assert 0.35 * w_full < w_half < 0.65 * w_full


def test_psi_and_wasserstein_helpers():
    assert psi([10, 20, 70], [0.1, 0.2, 0.7]) == pytest.approx(0.0, abs=1e-15)
    # An empty live bin is floored at epsilon rather than making PSI infinite.
    expected = (PSI_EPSILON - 0.5) * math.log(PSI_EPSILON / 0.5) + 0.5 * math.log(1.0 / 0.5)
    assert psi([0, 10], [0.5, 0.5]) == pytest.approx(expected)
    assert math.isnan(psi([0, 0], [0.5, 0.5]))
    q = np.linspace(-2.0, 2.0, 101)
    assert wasserstein1(q + 0.3, q) == pytest.approx(0.3)
    assert wasserstein1(q, q) == 0.0


# -- streaming detectors ---------------------------------------------------------------------------------------


def test_adwin_on_batch_mean_score_fires_after_level_shift_only(profile):
    rng = np.random.default_rng(8)
    m = monitor(profile)
    end = feed(m, rng, batches=300)
    quiet = m.report(end)
    assert detector(quiet, SCORE) == {"name": "adwin", "stream": SCORE, "drift_detected": False, "n_detections": 0}
    end = feed(m, rng, batches=100, t0=end, amount_scale=1.5)
    shifted = m.report(end)
    assert detector(shifted, SCORE)["drift_detected"] is True
    assert detector(shifted, SCORE)["n_detections"] >= 1
    assert shifted["drifted"] is True


def test_error_rate_detector_fires_when_labels_show_decay(profile):
    rng = np.random.default_rng(9)
    m = monitor(profile, decision_threshold=0.5)

    def label_batches(batches: int, error_rate: float) -> None:
        for _ in range(batches):
            scores = rng.uniform(0, 1, 256)
            labels = scores >= 0.5
            flip = rng.random(256) < error_rate
            m.observe_labels(scores, labels ^ flip)

    label_batches(300, 0.05)
    assert detector(m.report(1), "error_rate")["n_detections"] == 0
    label_batches(100, 0.25)
    report = m.report(2)
    assert detector(report, "error_rate")["drift_detected"] is True
    assert detector(report, SCORE)["n_detections"] == 0  # the streams are separate


def test_report_resets_the_window_but_not_the_detectors(profile):
    rng = np.random.default_rng(10)
    m = monitor(profile)
    end = feed(m, rng, batches=300, t0=5000)
    end = feed(m, rng, batches=100, t0=end, amount_scale=1.5)
    first = m.report(end)
    assert first["window_start"] == first["window_end"] - (end - 5000) * np.timedelta64(1, "ms").item()
    n_fired = detector(first, SCORE)["n_detections"]
    assert n_fired >= 1

    empty = m.report(end + 10)
    assert empty["count"] == 0
    assert empty["window_start"] == first["window_end"]
    assert all(math.isnan(f["value"]) and not f["drifted"] for f in empty["features"])
    assert detector(empty, SCORE) == {
        "name": "adwin",
        "stream": SCORE,
        "drift_detected": False,
        "n_detections": n_fired,
    }
    assert empty["drifted"] is False

    x, missing, scores = sample(rng, 300)
    m.observe(x, missing, scores, now_ms=end + 20)
    again = m.report(end + 30)
    assert again["count"] == 300  # counts from before the reset are gone
    assert stat(again, "amount", "psi")["drifted"] is False


def test_page_hinkley_and_factories_are_accepted(profile):
    """The score stream is in reference-std units, so PageHinkley's defaults mean something: quiet while
    stationary, firing on a large shift; a factory with a lower threshold catches a smaller one."""
    from river.drift import PageHinkley

    cases = [("page_hinkley", 3.0), (lambda: PageHinkley(threshold=10.0), 1.5)]
    for kind, scale in cases:
        m = monitor(profile, detector=kind)
        rng = np.random.default_rng(11)
        end = feed(m, rng, batches=300)
        quiet = detector(m.report(end), SCORE)
        assert quiet == {"name": "page_hinkley", "stream": SCORE, "drift_detected": False, "n_detections": 0}
        end = feed(m, rng, batches=100, t0=end, amount_scale=scale)
        assert detector(m.report(end), SCORE)["drift_detected"] is True
    with pytest.raises(ValueError, match="unknown detector"):
        monitor(profile, detector="kswin")  # type: ignore[arg-type]


# -- report shape and encoding ---------------------------------------------------------------------------------


def test_report_has_every_statistic_and_roundtrips_through_avro(profile):
    m = monitor(profile)
    end = feed(m, np.random.default_rng(12), batches=10, t0=1_714_566_600_000, amount_scale=3.0)
    m.observe_labels([0.9, 0.1], [1, 0])
    report = m.report(end)
    expected = {(f, s) for f in (*FEATURES, SCORE) for s in ("psi", "wasserstein")} | {
        (f, "missing_rate") for f in FEATURES
    }
    keys = [(f["feature"], f["statistic"]) for f in report["features"]]
    assert sorted(keys) == sorted(expected)
    assert {d["stream"] for d in report["detectors"]} == {SCORE, "error_rate"}
    serde = Serde("drift_report")
    assert serde.decode(serde.encode(report)) == report


def test_rejects_mismatched_profile_and_batches(profile):
    with pytest.raises(ValueError, match="no column"):
        DriftMonitor(profile, (*FEATURES, "unknown"), model_name="m", model_version="1", worker="w")
    m = monitor(profile)
    x, missing, scores = sample(np.random.default_rng(13), 8)
    with pytest.raises(ValueError, match="expected x and missing"):
        m.observe(x[:, :3], missing[:, :3], scores, now_ms=0)
    with pytest.raises(ValueError, match="expected x and missing"):
        m.observe(x, missing, scores[:4], now_ms=0)
    with pytest.raises(ValueError, match="labels"):
        m.observe_labels(scores, np.zeros(4))
    assert m.count == 0
