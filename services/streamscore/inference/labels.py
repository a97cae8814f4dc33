"""Delayed labels for drift monitoring: a transaction's ``is_fraud``, matched to the prediction of its request.

A card network asks for a score before it authorises a payment, and only later learns (from a chargeback, an
analyst) whether it was fraud. Here the transaction record on the transactions topic carries that label and its
``event_id`` is the request's ``request_id`` (the generator's ``--requests`` keeps that convention). A worker
remembers the scores it published and reads the labels of the partitions it scores, matching whichever side
arrives second; the matched pairs feed :meth:`DriftMonitor.observe_labels`, which catches a model that goes stale
while its inputs look unchanged.

Requests and transactions are both keyed by user id, so when the two topics have the same partition count the
label of a request scored from partition ``p`` is on partition ``p`` of the transactions topic, and each worker
reads only its share; otherwise every worker reads every partition and ignores labels it did not score. Labels
are a side read for monitoring: no offsets are committed, and a restarted worker starts at the end of the topic.
Both sides are bounded (``capacity`` each, oldest evicted first), so a label that never comes costs nothing.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable

import confluent_kafka
import numpy as np
import numpy.typing as npt
from prometheus_client import Counter

from streamscore.kafka import Consumer
from streamscore.serde import Serde, SerdeError
from streamscore.settings import Settings

__all__ = ["LabelFeed"]

log = logging.getLogger(__name__)

LABELS = Counter(
    "streamscore_inference_labels", "Delayed labels read from the transactions topic", ["outcome"]
)  # outcome: matched, evicted (no prediction in time), unlabelled, undecodable


class LabelFeed:
    """Scores this worker published, joined with labels from ``settings.topics.transactions`` by id."""

    def __init__(self, settings: Settings, *, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.topic = settings.topics.transactions
        self.requests_topic = settings.topics.score_requests
        self.capacity = capacity
        self._consumer = Consumer(
            settings.kafka, f"{settings.inference.group_id}-labels", [], client_suffix="labels",
            **{"enable.partition.eof": False},
        )  # fmt: skip
        self._serde = Serde("transaction", registry_url=settings.schema_registry_url, subject=f"{self.topic}-value")
        self._scores: OrderedDict[str, float] = OrderedDict()  # scored, label not seen yet
        self._labels: OrderedDict[str, bool] = OrderedDict()  # label seen, prediction not (yet) published
        self._following: frozenset[int] | None = None
        self._partitions: int | None = None
        self._aligned = False

    def follow(self, partitions: Iterable[int]) -> None:
        """Read the labels of the request partitions this worker owns now (all of them if the counts differ)."""
        if not self._partitions:  # unknown, or the topic was not there yet
            self._partitions = self._count(self.topic)
            self._aligned = self._partitions == self._count(self.requests_topic)
        wanted = frozenset(partitions) if self._aligned else frozenset(range(self._partitions))
        if wanted == self._following:
            return
        self._following = wanted
        self._consumer.raw.assign(
            [confluent_kafka.TopicPartition(self.topic, p, confluent_kafka.OFFSET_END) for p in sorted(wanted)]
        )

    def forget(self) -> None:
        """Drop the remembered scores (a new model is served); labels waiting for a prediction stay."""
        self._scores.clear()

    def _count(self, topic: str) -> int:
        metadata = self._consumer.raw.list_topics(topic, timeout=10).topics.get(topic)
        return len(metadata.partitions) if metadata is not None and metadata.error is None else 0

    def remember(self, request_ids: Iterable[str], scores: npt.NDArray[np.floating]) -> tuple[list[float], list[bool]]:
        """Record published scores; returns the (score, label) pairs whose label had arrived first."""
        matched_scores: list[float] = []
        matched_labels: list[bool] = []
        for request_id, score in zip(request_ids, scores.tolist(), strict=True):
            label = self._labels.pop(request_id, None)
            if label is None:
                _put(self._scores, request_id, score, self.capacity)
            else:
                matched_scores.append(score)
                matched_labels.append(label)
        LABELS.labels("matched").inc(len(matched_labels))
        return matched_scores, matched_labels

    def poll(self, max_messages: int = 2000) -> tuple[list[float], list[bool]]:
        """Labels that arrived since the last call (never blocks), matched to remembered scores."""
        if not self._following:
            return [], []
        matched_scores: list[float] = []
        matched_labels: list[bool] = []
        for msg in self._consumer.poll_batch(max_messages, 0):
            try:
                record = self._serde.decode(msg.value())
            except SerdeError:  # the feature processor dead-letters it; for labels it is simply not one
                LABELS.labels("undecodable").inc()
                continue
            if record["is_fraud"] is None:
                LABELS.labels("unlabelled").inc()
                continue
            score = self._scores.pop(record["event_id"], None)
            if score is None:
                if _put(self._labels, record["event_id"], bool(record["is_fraud"]), self.capacity):
                    LABELS.labels("evicted").inc()
            else:
                matched_scores.append(score)
                matched_labels.append(bool(record["is_fraud"]))
        LABELS.labels("matched").inc(len(matched_labels))
        return matched_scores, matched_labels

    def close(self) -> None:
        self._consumer.close()


def _put(table: OrderedDict[str, float] | OrderedDict[str, bool], key: str, value: float | bool, capacity: int) -> bool:
    """Insert, evicting the oldest entry when full; True if one was evicted."""
    table[key] = value  # type: ignore[assignment]
    if len(table) > capacity:
        table.popitem(last=False)
        return True
    return False
