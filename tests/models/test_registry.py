"""The MLflow model registry on a real sqlite database and artifact directory under tmp_path (no mocks)."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from streamscore.errors import StreamscoreError
from streamscore.models.card import CARD_KEY, INPUT_NAME, OUTPUT_NAME, ModelCard
from streamscore.models.registry import (
    CHALLENGER,
    CHAMPION,
    Registry,
    RegistryError,
    VersionInfo,
    feast_lineage,
)
from streamscore.models.runtime import ModelIntegrityError
from streamscore.settings import Settings
from streamscore.store import apply_definitions

FEATURES = ("user_amount_sum_1h", "amount")


def make_card(seed: int = 0, kind: str = "mlp") -> ModelCard:
    return ModelCard(
        model_name="fraud-detector",
        kind=kind,  # type: ignore[arg-type]
        feature_service="fraud_model_v1",
        features=FEATURES,
        defaults=(0.0, 0.0),
        request_features=("amount",),
        threshold=0.5,
        data_start="2026-01-01T00:00:00+00:00",
        data_end="2026-01-08T00:00:00+00:00",
        seed=seed,
        metrics={"roc_auc": 0.9},
    )


def onnx_bytes(card: ModelCard) -> bytes:
    """A one-node model (mean of the inputs as the score) carrying ``card``; different cards, different bytes."""
    node = helper.make_node("ReduceMean", [INPUT_NAME], [OUTPUT_NAME], axes=[1], keepdims=1)
    graph = helper.make_graph(
        [node],
        "registry-test",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", len(card.features)])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    helper.set_model_props(model, {CARD_KEY: card.to_json()})
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Unreachable Kafka and Redis: the registry and the Feast file registry must not need them.
    return Settings(
        data_dir=tmp_path / "data",
        kafka={"bootstrap_servers": "127.0.0.1:9"},
        redis={"url": "redis://127.0.0.1:9/0"},
        metrics_port=0,
    )


@pytest.fixture
def registry(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    # Run from an empty directory, so anything MLflow writes to the cwd (./mlruns, ./mlflow.db) is caught.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return Registry(settings)


def log(registry: Registry, seed: int, kind: str = "mlp") -> tuple[bytes, VersionInfo]:
    card = make_card(seed, kind)
    data = onnx_bytes(card)
    with registry.start_run(f"train-{seed}", tags={"purpose": "test"}) as run_id:
        info = registry.log_candidate(
            run_id,
            onnx_bytes=data,
            card=card,
            profile={"features": {"amount": {"mean": 12.5}}},
            report={"passed": True, "seed": seed},
            params={"seed": seed, "kind": kind, "lr": 0.01},
            metrics={"roc_auc": 0.9 + seed / 100, "pr_auc": 0.5},
        )
    return data, info


def test_default_location_is_under_the_data_dir(settings: Settings) -> None:
    registry = Registry(settings)
    root = settings.data_dir / "mlflow"
    assert registry.tracking_uri == f"sqlite:///{root / 'mlflow.db'}"
    assert not root.exists()  # nothing is created before first use


def test_log_candidate_registers_a_challenger(registry: Registry, settings: Settings, tmp_path: Path) -> None:
    data, info = log(registry, seed=1)

    assert info.version == 1
    assert info.aliases == (CHALLENGER,)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert (info.kind, info.feature_service) == ("mlp", "fraud_model_v1")
    assert (info.data_start, info.data_end) == ("2026-01-01T00:00:00+00:00", "2026-01-08T00:00:00+00:00")
    assert info.metrics == {"roc_auc": pytest.approx(0.91), "pr_auc": 0.5}
    assert info.created_at.endswith("+00:00")
    assert not info.promoted
    artifacts = (settings.data_dir / "mlflow" / "artifacts").resolve()
    assert info.artifact_uri == f"{artifacts.as_uri()}/{info.run_id}/artifacts/model"
    assert json.loads(json.dumps(info.to_dict()))["aliases"] == [CHALLENGER]

    fetched, same = registry.fetch(CHALLENGER)
    assert fetched == data
    assert same == info
    assert registry.read_json(1, "card.json") == json.loads(make_card(1).to_json())
    assert registry.read_json("1", "profile.json") == {"features": {"amount": {"mean": 12.5}}}
    assert registry.read_json(CHALLENGER, "gate_report.json") == {"passed": True, "seed": 1}

    client = registry._client  # the raw MLflow view: run tags, params and the version's tags
    run = client.get_run(info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["streamscore.sha256"] == info.sha256
    assert run.data.tags["purpose"] == "test"
    assert run.data.params == {"seed": "1", "kind": "mlp", "lr": "0.01"}
    version_tags = client.get_model_version("fraud-detector", "1").tags
    assert version_tags["feast.feature_service"] == "fraud_model_v1"
    assert version_tags["streamscore.sha256"] == info.sha256
    assert client.get_experiment_by_name("fraud-detector").artifact_location == artifacts.as_uri()

    assert list((tmp_path / "cwd").iterdir()) == []  # no ./mlruns, no ./mlflow.db


def test_versions_are_newest_first_with_aliases(registry: Registry) -> None:
    assert registry.versions() == []
    assert registry.champion() is None
    log(registry, seed=1)
    log(registry, seed=2, kind="gbt")
    registry.promote(1, reason="first")

    versions = registry.versions()
    assert [(v.version, v.aliases, v.kind, v.promoted) for v in versions] == [
        (2, (CHALLENGER,), "gbt", False),
        (1, (CHAMPION,), "mlp", True),
    ]
    assert versions == [registry.get(2), registry.get(1)]


def test_promote_and_rollback(registry: Registry) -> None:
    log(registry, seed=1)
    log(registry, seed=2)
    with pytest.raises(RegistryError, match="no champion"):
        registry.rollback()

    assert registry.promote(1, reason="baseline").aliases == (CHAMPION,)
    champion = registry.promote(2, reason="beats v1")
    assert (champion.version, champion.aliases, champion.promoted) == (2, (CHALLENGER, CHAMPION), True)
    assert registry.get(CHAMPION).version == 2
    tags = registry._client.get_model_version("fraud-detector", "2").tags
    assert tags["streamscore.promote_reason"] == "beats v1"
    assert tags["streamscore.promoted_at"].endswith("+00:00")
    assert registry.promote(2, reason="again").version == 2  # already champion: history unchanged

    back = registry.rollback()
    assert back.version == 1
    assert registry.champion() == back
    assert registry.get(2).promoted  # was champion once
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback()
    assert registry.champion() == back  # a refused rollback changes nothing


def test_rollback_follows_a_champion_moved_by_hand(registry: Registry) -> None:
    """The alias wins over the recorded history: a hand-set champion joins it, and rolls back to the last
    champion recorded before it."""
    for seed in (1, 2, 3):
        log(registry, seed=seed)
    registry.promote(1, reason="baseline")
    registry._client.set_registered_model_alias("fraud-detector", CHAMPION, "3")  # someone in the MLflow UI
    assert registry.champion().version == 3  # type: ignore[union-attr]
    assert registry.rollback().version == 1
    registry.promote(2, reason="next")
    assert registry.rollback().version == 1
    registry._client.delete_registered_model_alias("fraud-detector", CHAMPION)  # champion removed by hand
    assert registry.champion() is None
    assert registry.promote(1, reason="restore").aliases == (CHAMPION,)  # re-promoting sets the alias again


def test_unknown_versions_and_aliases(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="no model named 'fraud-detector'"):
        registry.get(1)
    log(registry, seed=1)
    for unknown, message in [(7, "no version 7"), ("7", "no version 7"), ("nope", "no alias 'nope'")]:
        with pytest.raises(RegistryError, match=message):
            registry.get(unknown)
    with pytest.raises(RegistryError, match="no version 7"):
        registry.promote(7, reason="x")
    with pytest.raises(RegistryError, match=r"no readable missing\.json"):
        registry.read_json(1, "missing.json")
    assert issubclass(RegistryError, StreamscoreError)


def test_tampered_artifact_is_an_integrity_error(registry: Registry, settings: Settings) -> None:
    data, info = log(registry, seed=1)
    stored = settings.data_dir / "mlflow" / "artifacts" / info.run_id / "artifacts" / "model" / "model.onnx"
    assert stored.read_bytes() == data
    stored.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        registry.fetch(1)


def test_two_registries_share_the_data_dir(registry: Registry, settings: Settings) -> None:
    log(registry, seed=1)
    other = Registry(settings)
    assert other.get(CHALLENGER) == registry.get(CHALLENGER)
    other.promote(1, reason="from the other one")
    assert registry.champion() == other.champion()
    assert registry.champion().version == 1  # type: ignore[union-attr]


def test_failed_artifact_upload_registers_nothing(registry: Registry, settings: Settings) -> None:
    """An artifact store that cannot take the files (here a plain file where model/ must go, which even root
    cannot write through): the run fails, and no model version points at half an upload."""
    log(registry, seed=1)
    card = make_card(2)
    started: list[str] = []

    def train_into_a_blocked_store() -> None:
        with registry.start_run("broken") as run_id:
            started.append(run_id)
            blocker = settings.data_dir / "mlflow" / "artifacts" / run_id / "artifacts" / "model"
            blocker.parent.mkdir(parents=True, exist_ok=True)
            blocker.write_text("not a directory")
            registry.log_candidate(
                run_id, onnx_bytes=onnx_bytes(card), card=card, profile={}, report={}, params={}, metrics={}
            )

    with pytest.raises(RegistryError, match="nothing registered"):
        train_into_a_blocked_store()
    (run_id,) = started
    assert registry._client.get_run(run_id).info.status == "FAILED"
    assert [v.version for v in registry.versions()] == [1]
    assert registry.get(CHALLENGER).version == 1


def test_unreachable_tracking_server_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry = Registry(Settings(data_dir=tmp_path, model={"tracking_uri": f"http://127.0.0.1:{port}"}))
    with pytest.raises(RegistryError, match=f"cannot reach the MLflow tracking server at http://127.0.0.1:{port}"):
        registry.versions()


def test_feast_lineage_uses_feasts_resolver(registry: Registry, settings: Settings, tmp_path: Path) -> None:
    log(registry, seed=1)
    # Feast checks that the service exists in this data_dir's Feast registry, so nothing resolves before apply.
    with pytest.raises(RegistryError, match="'fraud_model_v1' not found in the Feast registry"):
        feast_lineage(settings, CHALLENGER)
    apply_definitions(settings)
    registry.promote(1, reason="lineage")
    assert feast_lineage(settings, CHAMPION) == "fraud_model_v1"
    assert feast_lineage(settings, 1) == "fraud_model_v1"
    with pytest.raises(RegistryError, match="no alias 'nope'"):
        feast_lineage(settings, "nope")
    assert list((tmp_path / "cwd").iterdir()) == []  # Feast's MLflow client used our URI, not ./mlruns
