"""Each package exports exactly its intended public names (httpx-style): growth is a deliberate act."""

from __future__ import annotations

import importlib

import pytest

EXPECTED = {
    "streamscore.kafka": {
        "Consumer", "ConsumerError", "DeadLetter", "DeadLetterPublisher", "DeliveryError", "FailedDelivery",
        "Header", "Producer", "TopicResult", "TopicSpec", "admin_config", "consumer_config", "ensure_topics",
        "group_lag", "message_headers", "next_offsets", "producer_config", "read_dead_letter", "state_topic",
        "take_ready", "topic_specs",
    },
    "streamscore.serde": {
        "REASONS", "SCHEMA_NAMES", "Reason", "SchemaStore", "Serde", "SerdeError", "check_compatible",
        "load_schema",
    },
    "streamscore.stack": {"ComponentStatus", "Stack", "StackError"},
    "streamscore.store": {
        "PROJECT", "REPO_PATH", "OnlineWriter", "apply_definitions", "feast_env", "feature_store", "quiet_feast",
        "repo_config",
    },
    "streamscore.generator": {
        "ARROW_SCHEMA", "GeneratorConfig", "generate", "generate_frame", "generate_tables", "last_event_time",
        "produce_to_kafka", "start_ending_by", "write_parquet",
    },
    "streamscore.features": {
        "BackfillReport", "EventRules", "FeatureSpec", "PlanError", "ViewPlan", "ViewState", "backfill",
        "compile_view", "compile_views", "load_plans", "rules_for",
    },
    "streamscore.models": {
        "CARD_KEY", "CHALLENGER", "CHAMPION", "INPUT_NAME", "OUTPUT_NAME", "CardError", "EquivalenceError",
        "ModelCard", "ModelIntegrityError", "ModelLoadError", "Registry", "RegistryError", "ScoringSession",
        "VersionInfo", "build_profile", "check_equivalence", "export_onnx", "feast_lineage", "load_model",
        "open_session", "resolve_providers", "sha256_hex", "source_scores",
    },
    "streamscore.training": {
        "GateReport", "TrainResult", "TrainingDataError", "TrainingSet", "build_training_set", "decide", "evaluate",
        "service_features", "train",
    },
    "streamscore.monitoring": {"Prometheus", "PrometheusError"},
    "streamscore.retrain": {
        "Decision", "DriftPolicy", "RecentWindow", "RetrainOutcome", "Retrainer", "Trigger", "WindowError",
        "decisions", "export_window", "retrain_now", "run_retrainer",
    },
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_exports(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == EXPECTED[module]
    for name in mod.__all__:
        assert hasattr(mod, name), name
    assert mod.__doc__, f"{module} needs a docstring"
