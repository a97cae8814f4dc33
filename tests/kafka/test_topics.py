from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient

from streamscore.kafka import admin_config, ensure_topics, topic_specs
from streamscore.settings import Settings
from tests.kafka.helpers import create_topic

pytestmark = pytest.mark.integration


def _settings_with_topics(settings: Settings, unique: str) -> Settings:
    fields = (
        "transactions",
        "score_requests",
        "predictions",
        "drift",
        "dead_letters",
        "transactions_by_merchant",
        "features_state",
    )
    names = {f: f"{f}-{unique}" for f in fields}
    return settings.model_copy(update={"topics": settings.topics.model_copy(update=names)})


def test_create_is_idempotent(settings: Settings, unique: str) -> None:
    s = _settings_with_topics(settings, unique)
    first = ensure_topics(s)
    assert [(r.name, r.status, r.partitions) for r in first] == [(spec.name, "created", 4) for spec in topic_specs(s)]
    second = ensure_topics(s)
    assert [(r.name, r.status) for r in second] == [(spec.name, "exists") for spec in topic_specs(s)]

    described = AdminClient(admin_config(s.kafka)).list_topics(timeout=10).topics
    for spec in topic_specs(s):
        assert len(described[spec.name].partitions) == spec.partitions


def test_reports_a_topic_with_too_few_partitions(settings: Settings, unique: str) -> None:
    s = _settings_with_topics(settings, unique)
    create_topic(s, s.topics.drift, partitions=1)
    results = {r.name: r for r in ensure_topics(s)}
    assert results[s.topics.drift].status == "mismatch"
    assert "1 partitions" in results[s.topics.drift].detail
    assert results[s.topics.transactions].status == "created"


def test_every_declared_topic_has_a_retention_or_is_compacted() -> None:
    specs = topic_specs(Settings())
    assert [s.name for s in specs] == [
        "transactions",
        "score-requests",
        "predictions",
        "drift",
        "dead-letters",
        "transactions-by-merchant",
        "features-state-ingest",
        "features-state-rekey",
    ]
    deleting = [s for s in specs if s.config["cleanup.policy"] == "delete"]
    assert all(int(s.config["retention.ms"]) > 0 for s in deleting)
    # The feature processor's state keeps the newest row per entity, whatever its age.
    assert {s.name for s in specs if s.config["cleanup.policy"] == "compact"} == {
        "features-state-ingest",
        "features-state-rekey",
    }
