"""Every topic streamscore uses, declared once: name (from settings), partitions and retention.

``ensure_topics`` is idempotent: it creates what is missing and reports what it found, including a topic
that exists with fewer partitions than declared (it never deletes or shrinks anything).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamscore.errors import KafkaUnavailable
from streamscore.kafka.config import admin_config
from streamscore.settings import Settings

__all__ = ["STATE_STAGES", "TopicResult", "TopicSpec", "ensure_topics", "state_topic", "topic_specs"]

_DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    purpose: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicResult:
    name: str
    status: Literal["created", "exists", "mismatch"]
    partitions: int
    detail: str = ""


def topic_specs(settings: Settings) -> list[TopicSpec]:
    t = settings.topics

    def spec(name: str, purpose: str, retention_days: int) -> TopicSpec:
        return TopicSpec(
            name,
            purpose,
            t.partitions,
            t.replication_factor,
            {"cleanup.policy": "delete", "retention.ms": str(retention_days * _DAY_MS)},
        )

    return [
        spec(t.transactions, "raw card transactions (Transaction), keyed by user id", 7),
        spec(t.score_requests, "scoring requests (ScoreRequest), keyed by request id", 1),
        spec(t.predictions, "model outputs (Prediction), keyed by request id", 7),
        spec(t.drift, "drift reports (DriftReport), keyed by worker", 30),
        spec(t.dead_letters, "original bytes of failed messages, reason in headers", 14),
        spec(t.transactions_by_merchant, "accepted transactions re-keyed by merchant (features, internal)", 2),
        *(
            TopicSpec(
                state_topic(settings, stage),
                f"feature processor state of the {stage} stage: changed rows and checkpoints (compacted, internal)",
                t.partitions,
                t.replication_factor,
                _COMPACTED,
            )
            for stage in STATE_STAGES
        ),
    ]


STATE_STAGES = ("ingest", "rekey")
# Compaction keeps the newest row per entity. Segments roll every hour so that old versions become
# cleanable (the active segment never is); tombstones of evicted entities live a day, which a restore
# that reads from the start must outpace.
_COMPACTED = {
    "cleanup.policy": "compact",
    "segment.ms": str(3600 * 1000),
    "min.cleanable.dirty.ratio": "0.2",
    "delete.retention.ms": str(_DAY_MS),
}


def state_topic(settings: Settings, stage: str) -> str:
    """The compacted topic that holds one processing stage's state, partitioned like its input."""
    return f"{settings.topics.features_state}-{stage}"


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Creation returns before every partition has a leader; using a topic earlier fails with
    NOT_LEADER_FOR_PARTITION, so a create is only done once the metadata shows all leaders."""
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending and time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout_s).topics
        pending = {
            name
            for name in pending
            if name not in topics
            or topics[name].error is not None
            or any(p.leader < 0 or p.error is not None for p in topics[name].partitions.values())
        }
        if pending:
            time.sleep(0.1)
    if pending:
        raise KafkaUnavailable("the cluster", f"topics without a leader after {timeout_s}s: {sorted(pending)}")


def ensure_topics(settings: Settings, *, timeout_s: float = 30.0) -> list[TopicResult]:
    admin = AdminClient(admin_config(settings.kafka))
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise KafkaUnavailable(settings.kafka.bootstrap_servers, exc.args[0].str()) from None
    results: list[TopicResult] = []
    to_create: list[TopicSpec] = []
    found: list[TopicSpec] = []
    for spec in topic_specs(settings):
        (to_create if spec.name not in existing else found).append(spec)
    created: list[TopicSpec] = []
    if to_create:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, config=s.config) for s in to_create],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )
        for spec in to_create:
            try:
                futures[spec.name].result()
                created.append(spec)
                results.append(TopicResult(spec.name, "created", spec.partitions))
            except KafkaException as exc:
                # Another process may have created it between our listing and our request.
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
                found.append(spec)
    # A topic still being created lists with an error or without partitions: wait for its leaders first.
    _wait_for_leaders(admin, [s.name for s in found + created], timeout_s)
    topics = admin.list_topics(timeout=timeout_s).topics
    for spec in found:
        have = len(topics[spec.name].partitions)
        if have < spec.partitions:
            results.append(
                TopicResult(spec.name, "mismatch", have, f"has {have} partitions, {spec.partitions} declared")
            )
        else:
            results.append(TopicResult(spec.name, "exists", have))
    order = {s.name: i for i, s in enumerate(topic_specs(settings))}
    return sorted(results, key=lambda r: order[r.name])
