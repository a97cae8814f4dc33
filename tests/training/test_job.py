"""`train` end to end on real Feast (DuckDB offline store), MLflow (sqlite) and ONNX Runtime: reproducible bytes,
the gate deciding promotion, and nothing registered when a check fails."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
import pytest
from threadpoolctl import threadpool_limits

from streamscore.models import (
    CHALLENGER,
    CHAMPION,
    EquivalenceError,
    Registry,
    feast_lineage,
    load_model,
    open_session,
    sha256_hex,
)
from streamscore.settings import Settings
from streamscore.store import feature_store
from streamscore.training import TrainingDataError, TrainingSet, TrainResult, build_training_set, evaluate, train
from streamscore.training.trainers import impute
from tests.training.helpers import History, data_dir_with

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Trained:
    settings: Settings
    events: Path
    start: datetime
    end: datetime
    first: TrainResult
    second: TrainResult
    versions_after_first: list[dict[str, Any]]


@pytest.fixture(scope="module")
def trained(history: History, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Two MLP trainings with the same seed on the same data, in a fresh registry."""
    settings = data_dir_with(history, tmp_path_factory.mktemp("job"))
    args = {"events": history.events, "start": history.start, "end": history.end, "kind": "mlp", "seed": 0}
    first = train(settings, **args)  # type: ignore[arg-type]
    after_first = listing(settings)
    second = train(settings, **args)  # type: ignore[arg-type]
    return Trained(settings, history.events, history.start, history.end, first, second, after_first)


@pytest.fixture(scope="module")
def data(trained: Trained) -> TrainingSet:
    """The training set the models were fitted on, rebuilt."""
    s = trained.settings
    return build_training_set(s, feature_store(s), trained.events, trained.start, trained.end)


def listing(settings: Settings) -> list[dict[str, Any]]:
    return [v.to_dict() for v in Registry(settings).versions()]


def run_count(settings: Settings) -> int:
    client = mlflow.MlflowClient(tracking_uri=Registry(settings).tracking_uri)
    experiment = client.get_experiment_by_name(settings.model.name)
    return 0 if experiment is None else len(client.search_runs([experiment.experiment_id]))


def with_training(settings: Settings, **update: object) -> Settings:
    return settings.model_copy(update={"training": settings.training.model_copy(update=update)})


# -- reproducibility and the gate -----------------------------------------------------------------------------------


def test_same_seed_and_data_give_the_same_metrics_and_onnx_bytes(trained: Trained) -> None:
    first, second = trained.first, trained.second
    assert (first.version, second.version) == (1, 2)
    assert second.sha256 == first.sha256
    assert second.card == first.card  # metrics, threshold, defaults, windows: all equal
    assert second.card.metrics == first.card.metrics
    assert second.epochs == first.epochs
    registry = Registry(trained.settings)
    one, info_one = registry.fetch(1)
    two, info_two = registry.fetch(2)
    assert one == two
    assert sha256_hex(one) == info_one.sha256 == info_two.sha256 == first.sha256


def test_the_result_describes_the_training_set(trained: Trained, data: TrainingSet) -> None:
    first = trained.first
    for name in ("train", "validation", "test"):
        rows = data.frame[data.frame["split"] == name]
        assert first.rows[name] == len(rows)
        assert first.positives[name] == int(rows["label"].sum()) >= trained.settings.training.min_positives
    assert first.card.features == data.features
    assert first.card.request_features == data.request_features
    assert first.card.windows == {k: (a.isoformat(), b.isoformat()) for k, (a, b) in data.windows.items()}
    assert first.card.kind == "mlp"
    assert first.card.feature_service == "fraud_model_v1"
    assert first.card.metrics["rows"] == first.rows["test"]
    assert 0.0 <= first.max_abs_diff <= trained.settings.training.equivalence_tolerance
    assert 0.0 < first.card.threshold < 1.0
    assert list(first.seconds) == ["dataset", "fit", "export", "gate", "register"]  # each phase timed, in order
    assert all(s > 0 for s in first.seconds.values())


def test_the_first_model_is_promoted(trained: Trained) -> None:
    first = trained.first
    assert first.promoted
    assert first.gate.passed
    assert first.gate.champion is None
    assert first.gate.champion_version is None
    assert first.gate.reasons[-1] == "no champion yet: the baseline is the only rival"
    assert first.card.metrics["roc_auc"] > first.gate.baseline["roc_auc"] + 0.1
    (only,) = trained.versions_after_first
    assert only["version"] == 1
    assert sorted(only["aliases"]) == [CHALLENGER, CHAMPION]


def test_a_retrain_that_is_no_better_stays_challenger(trained: Trained) -> None:
    first, second = trained.first, trained.second
    assert not second.promoted
    assert not second.gate.passed
    assert second.gate.champion_version == 1
    assert second.gate.champion == pytest.approx(first.card.metrics, abs=1e-3)  # the champion, on this window
    refused = [r for r in second.gate.reasons if "does not beat champion" in r]
    assert [r.split()[0] for r in refused] == ["roc_auc", "pr_auc"]
    assert all(r.endswith(f"by >= {trained.settings.training.gate_margin:g}") for r in refused)
    registry = Registry(trained.settings)
    assert registry.champion().version == 1  # type: ignore[union-attr]
    assert registry.get(CHALLENGER).version == 2
    versions = {v["version"]: v for v in listing(trained.settings)}
    assert versions[1]["aliases"] == [CHAMPION]
    assert versions[2]["aliases"] == [CHALLENGER]
    assert versions[1]["promoted"]
    assert not versions[2]["promoted"]
    assert registry.read_json(2, "gate_report.json")["reasons"] == second.gate.reasons


def test_registered_versions_carry_metrics_and_provenance(trained: Trained) -> None:
    info = Registry(trained.settings).get(1)
    assert info.kind == "mlp"
    assert info.feature_service == "fraud_model_v1"
    assert info.data_start == trained.start.isoformat()
    assert info.data_end == trained.end.isoformat()
    assert info.metrics["test_roc_auc"] == pytest.approx(trained.first.card.metrics["roc_auc"])
    assert info.metrics["rows_train"] == trained.first.rows["train"]
    assert info.artifact_uri.endswith("/model")


def test_the_profile_covers_every_input_and_the_score(trained: Trained) -> None:
    profile = Registry(trained.settings).read_json(1, "profile.json")
    columns = profile["columns"]
    assert set(columns) == {*trained.first.card.features, "score"}
    assert all(c["count"] == trained.first.rows["train"] for c in columns.values())
    assert columns["user_secs_since_prev_txn"]["missing_rate"] > 0  # first transactions have no previous one
    assert columns["req_amount_log"]["missing_rate"] == 0
    assert 0.0 <= columns["score"]["min"] <= columns["score"]["max"] <= 1.0


def test_the_served_champion_reproduces_the_cards_test_metrics(trained: Trained, data: TrainingSet) -> None:
    session = load_model(trained.settings)
    registry = Registry(trained.settings)
    assert session.sha256 == registry.get(CHAMPION).sha256 == trained.first.sha256
    assert session.version == "1"
    assert session.card == trained.first.card
    rows = data.frame[data.frame["split"] == "test"]
    x = impute(rows[list(session.card.features)].to_numpy(np.float64), np.asarray(session.card.defaults))
    got = evaluate(rows["label"].to_numpy(), session.predict(x))
    assert got["rows"] == trained.first.card.metrics["rows"]
    assert got["roc_auc"] == pytest.approx(trained.first.card.metrics["roc_auc"], abs=1e-4)
    assert got["pr_auc"] == pytest.approx(trained.first.card.metrics["pr_auc"], abs=1e-3)


def test_feast_resolves_the_models_feature_service(trained: Trained) -> None:
    assert feast_lineage(trained.settings, CHAMPION) == "fraud_model_v1"
    assert feast_lineage(trained.settings, 2) == "fraud_model_v1"


# -- nothing registered when a check fails --------------------------------------------------------------------------


def test_an_onnx_graph_that_disagrees_is_not_registered(trained: Trained) -> None:
    before, runs = listing(trained.settings), run_count(trained.settings)
    strict = with_training(trained.settings, equivalence_tolerance=1e-12)
    with pytest.raises(EquivalenceError, match="tolerance 1e-12"):
        train(strict, events=trained.events, start=trained.start, end=trained.end, kind="mlp", seed=1)
    assert listing(trained.settings) == before
    assert run_count(trained.settings) == runs


@pytest.mark.parametrize("bad", ["reversed-window", "too-few-frauds", "no-events"])
def test_bad_data_registers_nothing(trained: Trained, bad: str, tmp_path: Path) -> None:
    before, runs = listing(trained.settings), run_count(trained.settings)
    settings, events, start, end = trained.settings, trained.events, trained.start, trained.end
    if bad == "reversed-window":
        start, end = end, start
    elif bad == "too-few-frauds":
        settings, end = with_training(settings, min_positives=10_000), start + timedelta(hours=2)
    else:
        events = tmp_path / "missing.parquet"
    with pytest.raises(TrainingDataError):
        train(settings, events=events, start=start, end=end, kind="mlp", seed=0)
    assert listing(trained.settings) == before
    assert run_count(trained.settings) == runs


# -- gradient-boosted trees -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gbt(history: History, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainResult]:
    """A gbt model on the first three hours only (boosting is the slow part), in its own registry."""
    settings = data_dir_with(history, tmp_path_factory.mktemp("gbt"), min_positives=10)
    # One OpenMP thread: boosting's many short parallel loops crawl when the cores are shared with other work.
    with threadpool_limits(1, user_api="openmp"):
        result = train(
            settings, events=history.events, start=history.start, end=history.start + timedelta(hours=3), kind="gbt"
        )
    return settings, result


def test_a_gbt_model_trains_exports_and_registers(gbt: tuple[Settings, TrainResult]) -> None:
    settings, result = gbt
    assert result.card.kind == "gbt"
    assert result.version == 1
    assert result.epochs % 10 == 0
    assert result.epochs > 0
    assert result.max_abs_diff <= settings.training.equivalence_tolerance
    onnx_bytes, info = Registry(settings).fetch(result.version)
    assert info.kind == "gbt"
    assert info.sha256 == result.sha256 == sha256_hex(onnx_bytes)
    ops = [n.op_type for n in onnx.load_from_string(onnx_bytes).graph.node]
    assert ops == ["TreeEnsembleRegressor", "Sigmoid"]
    session = open_session(onnx_bytes, expected_sha256=info.sha256, providers="cpu")
    assert session.card == result.card
    assert result.card.metrics["roc_auc"] > result.gate.baseline["roc_auc"]
    assert result.promoted == result.gate.passed
    assert (Registry(settings).champion() is not None) == result.promoted
