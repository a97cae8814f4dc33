"""The validation gate and the trainers' imputation on hand-checked numbers (no data, no Feast)."""

from __future__ import annotations

import numpy as np
import pytest

from streamscore.training.gate import decide, evaluate, f1_threshold
from streamscore.training.trainers import impute, medians

BASELINE = {"roc_auc": 0.5, "pr_auc": 0.02, "rows": 1000.0, "positives": 20.0}
CHAMPION = {"roc_auc": 0.90, "pr_auc": 0.40, "rows": 1000.0, "positives": 20.0}
MARGIN = 0.002


def metrics(roc_auc: float, pr_auc: float) -> dict[str, float]:
    return {"roc_auc": roc_auc, "pr_auc": pr_auc, "rows": 1000.0, "positives": 20.0}


# -- decide ---------------------------------------------------------------------------------------------------------


def test_a_better_model_passes() -> None:
    report = decide(metrics(0.95, 0.50), BASELINE, CHAMPION, margin=MARGIN, champion_version=3)
    assert report.passed
    assert report.champion_version == 3
    assert report.champion == CHAMPION
    assert report.baseline == BASELINE
    assert report.reasons == [
        "roc_auc 0.9500 beats baseline 0.5000 by >= 0.002",
        "pr_auc 0.5000 beats baseline 0.0200 by >= 0.002",
        "roc_auc 0.9500 beats champion 0.9000 by >= 0.002",
        "pr_auc 0.5000 beats champion 0.4000 by >= 0.002",
    ]


@pytest.mark.parametrize(
    ("candidate", "failing"),
    [
        (metrics(0.85, 0.30), ["roc_auc", "pr_auc"]),  # worse on both
        (metrics(0.95, 0.39), ["pr_auc"]),  # better ranking, finds less fraud
        (metrics(0.89, 0.60), ["roc_auc"]),
    ],
)
def test_a_model_worse_than_the_champion_on_any_metric_fails(candidate: dict[str, float], failing: list[str]) -> None:
    report = decide(candidate, BASELINE, CHAMPION, margin=MARGIN, champion_version=3)
    assert not report.passed
    refused = [r for r in report.reasons if "does not beat" in r]
    assert [r.split()[0] for r in refused] == failing
    assert all("champion" in r for r in refused)


def test_equal_metrics_do_not_beat_the_champion_by_the_margin() -> None:
    report = decide(dict(CHAMPION), BASELINE, CHAMPION, margin=MARGIN, champion_version=1)
    assert not report.passed
    assert "roc_auc 0.9000 does not beat champion 0.9000 by >= 0.002" in report.reasons
    assert "pr_auc 0.4000 does not beat champion 0.4000 by >= 0.002" in report.reasons


def test_better_by_less_than_the_margin_fails_but_passes_with_no_margin() -> None:
    candidate = metrics(0.9005, 0.4005)
    assert not decide(candidate, BASELINE, CHAMPION, margin=MARGIN).passed
    assert decide(candidate, BASELINE, CHAMPION, margin=0.0).passed


def test_a_model_no_better_than_the_baseline_fails_without_a_champion() -> None:
    report = decide(metrics(0.501, 0.50), BASELINE, None, margin=MARGIN)
    assert not report.passed
    assert report.reasons[0] == "roc_auc 0.5010 does not beat baseline 0.5000 by >= 0.002"
    assert report.reasons[-1] == "no champion yet: the baseline is the only rival"
    assert report.champion is None


def test_the_first_model_passes_on_the_baseline_alone() -> None:
    report = decide(metrics(0.8, 0.1), BASELINE, None, margin=MARGIN)
    assert report.passed
    assert len(report.reasons) == 3
    assert "no champion yet" in report.reasons[-1]


def test_a_champion_that_could_not_be_scored_fails_the_gate() -> None:
    report = decide(
        metrics(0.99, 0.99), BASELINE, None, margin=MARGIN, champion_version=4, champion_problem="it needs inputs x"
    )
    assert not report.passed
    assert report.reasons[-1] == "champion v4 could not be compared: it needs inputs x"
    assert not any("no champion yet" in r for r in report.reasons)


def test_the_report_is_plain_data() -> None:
    report = decide(metrics(0.95, 0.5), BASELINE, CHAMPION, margin=MARGIN, champion_version=2)
    data = report.to_dict()
    assert data["passed"] is True
    assert data["margin"] == MARGIN
    assert data["champion_version"] == 2
    assert data["candidate"]["roc_auc"] == 0.95
    assert data["reasons"] == report.reasons


# -- evaluate and the threshold -------------------------------------------------------------------------------------


def test_evaluate_on_a_hand_checked_case() -> None:
    y = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    got = evaluate(y, scores)
    # ROC-AUC: of the 4 (positive, negative) pairs, 3 are ordered right (0.35 < 0.4 is the miss).
    # PR-AUC (average precision): ranks 0.8 (hit, P=1), 0.4 (miss), 0.35 (hit, P=2/3): (1 + 2/3) / 2.
    assert got == pytest.approx({"roc_auc": 0.75, "pr_auc": 5 / 6, "rows": 4.0, "positives": 2.0})


def test_evaluate_of_a_constant_score_is_the_baseline() -> None:
    y = np.array([0, 1, 0, 0, 1, 0, 0, 0])
    got = evaluate(y, np.full(len(y), 0.3))
    assert got["roc_auc"] == 0.5
    assert got["pr_auc"] == pytest.approx(0.25)


def test_f1_threshold_on_a_hand_checked_case() -> None:
    y = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2])
    # Cutting after 0.9: P 1, R 1/2, F1 2/3; after 0.8: 1/2; after 0.7: P 2/3, R 1, F1 0.8 (best); after 0.3: 2/3.
    assert f1_threshold(y, scores) == 0.7
    shuffled = np.array([3, 0, 4, 2, 1])
    assert f1_threshold(y[shuffled], scores[shuffled]) == 0.7


def test_f1_threshold_only_cuts_between_different_scores() -> None:
    y = np.array([1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    # Cutting inside the 0.5 tie (F1 1.0) is impossible: at >= 0.5 all three flag (P 1/2, R 1, F1 2/3), at >= 0.9
    # one does (P 1, R 1/2, F1 2/3); the first best is 0.9.
    assert f1_threshold(y, scores) == 0.9


# -- imputation -----------------------------------------------------------------------------------------------------


def test_medians_ignore_missing_values_and_default_an_empty_column_to_zero() -> None:
    nan = np.nan
    x = np.array([[1.0, nan, nan, 5.0], [3.0, 2.0, nan, 5.0], [nan, 4.0, nan, 5.0], [10.0, 9.0, nan, nan]])
    np.testing.assert_array_equal(medians(x), [3.0, 4.0, 0.0, 5.0])


def test_impute_fills_each_gap_with_its_column_default_as_float32() -> None:
    nan = np.nan
    x = np.array([[1.5, nan], [nan, nan], [2.5, 7.0]])
    out = impute(x, np.array([9.0, -1.0]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[1.5, -1.0], [9.0, -1.0], [2.5, 7.0]], dtype=np.float32))
    assert np.isnan(x).sum() == 3  # the input is left as it was
