"""How far a consumer group is behind: the committed offsets against the partition ends."""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import Consumer, TopicPartition

from streamscore.kafka.config import consumer_config
from streamscore.settings import KafkaSettings

__all__ = ["group_lag"]


def group_lag(kafka: KafkaSettings, group_id: str, topics: Sequence[str], *, timeout_s: float = 10.0) -> int:
    """Messages of ``topics`` the group has not committed yet (a partition never committed counts whole).

    Raises ``confluent_kafka.KafkaException`` while the group coordinator is unavailable (e.g. loading).
    """
    probe = Consumer(consumer_config(kafka, group_id, client_suffix="lag-probe"))
    try:
        total = 0
        for topic in topics:
            meta = probe.list_topics(topic, timeout=timeout_s).topics[topic]
            tps = [TopicPartition(topic, p) for p in meta.partitions]
            for tp in probe.committed(tps, timeout=timeout_s):
                _, high = probe.get_watermark_offsets(tp, timeout=timeout_s)
                total += high - max(tp.offset, 0)
        return total
    finally:
        probe.close()
