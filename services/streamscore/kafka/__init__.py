"""Kafka access for every stage: the only package that builds confluent-kafka configuration.

Public names: :class:`Producer` (idempotent, delivery reports surfaced), :class:`Consumer` (manual commits),
:class:`DeadLetterPublisher` and :func:`read_dead_letter`, and :func:`ensure_topics` for the declared topics.
"""

from streamscore.kafka.config import admin_config, consumer_config, producer_config
from streamscore.kafka.consumer import Consumer, ConsumerError, next_offsets, take_ready
from streamscore.kafka.deadletter import DeadLetter, DeadLetterPublisher, message_headers, read_dead_letter
from streamscore.kafka.lag import group_lag
from streamscore.kafka.producer import DeliveryError, FailedDelivery, Header, Producer
from streamscore.kafka.topics import TopicResult, TopicSpec, ensure_topics, state_topic, topic_specs

__all__ = [
    "Consumer",
    "ConsumerError",
    "DeadLetter",
    "DeadLetterPublisher",
    "DeliveryError",
    "FailedDelivery",
    "Header",
    "Producer",
    "TopicResult",
    "TopicSpec",
    "admin_config",
    "consumer_config",
    "ensure_topics",
    "group_lag",
    "message_headers",
    "next_offsets",
    "producer_config",
    "read_dead_letter",
    "state_topic",
    "take_ready",
    "topic_specs",
]
