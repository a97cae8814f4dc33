"""The feature processor's work, whichever engine feeds it: the per-partition states of both stages, the path
of a batch to Kafka and Redis, checkpoints, and the online repair.

An engine (``app.py`` on faust, ``kafka_engine.py`` on a plain confluent-kafka consumer) takes batches from
Kafka, hands them here, and commits a partition's offsets only after a :meth:`FeatureProcessor.checkpoint`
covering them returned: the checkpoint waits for Kafka's acknowledgements, and each batch's outputs were
acknowledged by the broker and Redis before it. The local disk holds nothing: a partition taken over, on this
host or another, is recovered from Kafka and checked against the committed offset (``recovery.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis
from prometheus_client import Counter, Gauge, Histogram
from redis.exceptions import OutOfMemoryError  # type: ignore[attr-defined]  # missing from types-redis

from streamscore.errors import StreamscoreError
from streamscore.features.changelog import StateLog
from streamscore.features.plan import ViewPlan
from streamscore.features.recovery import Recovery
from streamscore.features.resync import OnlineMarkers
from streamscore.features.rules import EventRules
from streamscore.features.stages import (
    BEYOND_STATE,
    IngestStage,
    InRecord,
    PartitionState,
    RekeyStage,
    StageOutput,
    online_rows,
)
from streamscore.kafka import DeadLetterPublisher, Producer, state_topic
from streamscore.serde import Serde, SerdeError
from streamscore.settings import Settings
from streamscore.store import OnlineWriter

__all__ = ["FeatureProcessor"]

log = logging.getLogger(__name__)

EVENTS_IN = Counter("streamscore_features_events_in", "Messages taken from Kafka by the feature processor", ["stage"])
EVENTS_APPLIED = Counter("streamscore_features_events_applied", "Events applied to feature windows", ["stage"])
LATE = Counter("streamscore_features_late_events", "Events dropped as late against their watermark")
BATCHES = Counter("streamscore_features_batches", "Batches processed", ["stage"])
BATCH_SIZE = Histogram(
    "streamscore_features_batch_size",
    "Messages per batch",
    ["stage"],
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000),
)
FRESHNESS = Histogram(
    "streamscore_features_freshness_seconds",
    "Event time to online write, per applied event",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LAG = Gauge("streamscore_features_consumer_lag", "Messages behind the partition end", ["topic", "partition"])
CHECKPOINT_SECONDS = Histogram(
    "streamscore_features_checkpoint_seconds", "Time to write and acknowledge one round of checkpoints"
)
CHECKPOINT_BYTES = Counter("streamscore_features_checkpoint_bytes", "State bytes written to Kafka", ["stage"])
CHECKPOINT_ROWS = Counter("streamscore_features_checkpoint_rows", "Changed entity rows written to Kafka", ["stage"])
ENTITIES = Gauge("streamscore_features_entities", "Entities held in window state", ["view"])
STATE_BYTES = Gauge("streamscore_features_state_bytes", "Bytes of window state arrays", ["view"])
EVICTED = Counter("streamscore_features_evicted_entities", "Idle entities evicted from window state", ["view"])
REGISTRY_WAITS = Counter(
    "streamscore_features_registry_waits", "Batches held back (not dead-lettered) while the schema registry was down"
)
REDIS_WAITS = Counter(
    "streamscore_features_online_store_waits", "Online writes held back while Redis was unavailable or out of memory"
)
RESYNCED = Counter(
    "streamscore_features_resynced_entities", "Entities rewritten because the online store lost data", ["stage"]
)
_BACKOFF_START_S, _BACKOFF_MAX_S = 0.1, 5.0
_RESYNC_CHUNK = 10_000
# Redis errors a write outlives by waiting: down, loading its data after a restart, a read-only replica during
# a failover, or out of memory under maxmemory + noeviction (the operator adds memory or it evicts).
REDIS_OUTAGES = (redis.ConnectionError, redis.TimeoutError, OutOfMemoryError, redis.ReadOnlyError)
BEYOND = Counter(
    "streamscore_features_beyond_state_events",
    "Events dead-lettered because they reach further back than the recovered or evicted state",
    ["stage"],
)


class FeatureProcessor:
    """Owns the per-partition states of both stages and the path of a batch to Kafka and Redis."""

    def __init__(self, settings: Settings, plans: Sequence[ViewPlan], rules: EventRules) -> None:
        self.settings = settings
        topics = settings.topics
        serde = Serde("transaction", registry_url=settings.schema_registry_url, subject=f"{topics.transactions}-value")
        self.ingest = IngestStage(
            plans,
            rules,
            serde,
            partition_key="user_id",
            forwards={"merchant_id": (topics.transactions_by_merchant, topics.partitions)},
        )
        self.rekey = RekeyStage(plans, entity_key="merchant_id")
        self.plans = {p.name: p for p in plans}
        self.producer = Producer(settings.kafka, client_suffix="features")
        self.dead_letters = DeadLetterPublisher(self.producer, topics.dead_letters, stage="features")
        self.writer = OnlineWriter(settings)
        self.markers = OnlineMarkers(self.writer.redis, settings.features.group_id)
        self.idle_ms = rules.allowed_lag_ms + round(settings.features.idle_margin_s * 1000)
        self.recovery: dict[str, Recovery] = {}
        for stage, topic, short in (
            (self.ingest, topics.transactions, "ingest"),
            (self.rekey, topics.transactions_by_merchant, "rekey"),
        ):
            state_log = StateLog(
                settings.kafka, self.producer, state_topic(settings, short), group_id=settings.features.group_id
            )
            self.recovery[stage.name] = Recovery(settings, stage, topic, state_log, allowed_lag_ms=rules.allowed_lag_ms)
        self.ingest.source_id = self.recovery[self.ingest.name].topic_id
        self.ingest.partitioner = settings.kafka.partitioner
        self.stopping = threading.Event()  # set when the app stops: a wait for the registry gives up
        self.states: dict[tuple[str, int], PartitionState] = {}
        self.stale: dict[tuple[str, int], dict[str, set[str]]] = {}
        self.poisoned = False  # a batch failed midway: the engine stops, and no checkpoint may follow

    def _state(self, stage: IngestStage | RekeyStage, partition: int) -> PartitionState:
        key = (stage.name, partition)
        state = self.states.get(key)
        if state is None:
            recovery = self.recovery[stage.name]
            if stage is self.ingest:
                self.ingest.partitions = recovery.partition_count()
            recovered = recovery.recover(partition)
            state = self.states[key] = recovered.state
            self.stale[key] = recovered.stale
            if recovered.rewrite:  # a rebuilt state's exact entities, so new features reach the store now
                for view, rows in recovered.rewrite.items():
                    self._write_online({view: [rows]})
            if recovered.backlog is not None:  # records the group's offset would skip: processed here
                for batch in recovery.read(partition, *recovered.backlog):
                    self._process_all(stage, {partition: batch}, len(batch), True)
        return state

    def handle(
        self, stage: IngestStage | RekeyStage, records: Sequence[InRecord], *, await_kafka: bool = True
    ) -> StageOutput:
        """Process one batch (any mix of partitions, each in offset order) and deliver its outputs; blocks until
        Redis acknowledged its writes and, with ``await_kafka``, the broker its forwards and dead letters.

        ``await_kafka=False`` is for an engine that commits only what a checkpoint covers (the kafka engine):
        :meth:`checkpoint` waits for every output before it writes a state, so the wait moves from every batch
        (a broker round trip, under the stages' lock) to every checkpoint round. faust commits what was
        acknowledged to it, so its engine waits per batch.

        A failure marks the processor poisoned: its states may hold part of the batch, so no checkpoint may
        follow."""
        by_partition: dict[int, list[InRecord]] = defaultdict(list)
        for rec in records:
            by_partition[rec.partition].append(rec)
        try:
            return self._process_all(stage, by_partition, len(records), await_kafka)
        except BaseException:
            self.poisoned = True
            raise

    def _process_all(
        self, stage: IngestStage | RekeyStage, by_partition: dict[int, list[InRecord]], n_events: int, await_kafka: bool
    ) -> StageOutput:
        """Process until every partition's records are applied. A partition that meets a schema-registry
        outage is retried with backoff (its records are valid as far as anyone knows: dead-lettering them, as
        undecodable, and committing past them would lose them for the features for good)."""
        delay = _BACKOFF_START_S
        done = StageOutput()
        while True:
            out, waiting = self._process(stage, by_partition, n_events, await_kafka)
            done.dead += out.dead
            done.forwards += out.forwards
            done.applied += out.applied
            if not waiting:
                return done
            REGISTRY_WAITS.inc()
            log.warning("schema registry unreachable; retrying %d partition(s) in %.1fs", len(waiting), delay)
            if self.stopping.wait(delay):
                raise StreamscoreError("stopped while waiting for the schema registry; the batch is not committed")
            delay = min(delay * 2, _BACKOFF_MAX_S)
            by_partition, n_events = {p: by_partition[p] for p in waiting}, 0

    def _write_online(self, online: dict[str, list[Any]]) -> None:
        for view, parts in online.items():
            ids = [i for p in parts for i in p.ids]
            if not ids:
                continue
            values = np.concatenate([p.values for p in parts])
            event_ms = np.concatenate([p.event_ms for p in parts])
            names = self.plans[view].feature_names
            features = {n: values[:, j] for j, n in enumerate(names)}
            delay = _BACKOFF_START_S
            while True:
                try:
                    self.writer.write(view, ids, features, event_ms)
                    break
                except REDIS_OUTAGES as exc:  # the batch waits (unacknowledged) rather than the process dying
                    REDIS_WAITS.inc()
                    log.warning("online store unavailable (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
                    if self.stopping.wait(delay):
                        raise StreamscoreError("stopped while the online store was unavailable") from exc
                    delay = min(delay * 2, _BACKOFF_MAX_S)

    def repair_online(self) -> None:
        """Rewrite the entities of every partition whose marker says Redis may have lost them (resync.py)."""
        try:
            run_id = self.markers.run_id()
            stale = self.markers.stale(list(self.states), run_id)
        except redis.RedisError as exc:
            log.warning("online store markers not checked (%s); next round", exc)
            return
        for stage, partition in stale:
            state = self.states[(stage, partition)]
            written = 0
            for name, view in state.views.items():
                rows = np.fromiter(view.rows.values(), np.int64, len(view))
                for start in range(0, len(rows), _RESYNC_CHUNK):
                    chunk = online_rows(view, rows[start : start + _RESYNC_CHUNK])
                    self._write_online({name: [chunk]})
                    written += len(chunk.ids)
            try:
                self.markers.mark(stage, partition, run_id)
            except redis.RedisError as exc:
                log.warning("online store marker of %s[%d] not set (%s); next round", stage, partition, exc)
                continue
            RESYNCED.labels(stage).inc(written)
            if written:
                log.warning(
                    "online store lost data or was asked to resync: rewrote %d entities of %s[%d]",
                    written,
                    stage,
                    partition,
                )

    def _process(
        self, stage: IngestStage | RekeyStage, by_partition: dict[int, list[InRecord]], n_events: int, await_kafka: bool
    ) -> tuple[StageOutput, list[int]]:
        """One pass, outputs delivered; also returns the partitions left untouched by a registry outage."""
        merged = StageOutput()
        online: dict[str, list[Any]] = defaultdict(list)
        waiting: list[int] = []
        for partition, records in by_partition.items():
            try:
                out = stage.process(self._state(stage, partition), records)
            except SerdeError as exc:
                if exc.reason != "registry":
                    raise
                waiting.append(partition)
                continue
            merged.dead.extend(out.dead)
            merged.forwards.extend(out.forwards)
            merged.applied += out.applied
            merged.event_ms.extend(out.event_ms)
            for view, rows in out.online.items():
                online[view].append(rows)
        for rec, reason, error in merged.dead:
            self.dead_letters.publish_raw(
                rec.topic, rec.partition, rec.offset, rec.key, rec.value, rec.headers, reason, error
            )
            if reason == "late":
                LATE.inc()
            elif reason == BEYOND_STATE:
                BEYOND.labels(stage.name).inc()
        for topic, key, value, headers, partition in merged.forwards:
            self.producer.send(topic, value, key=key, headers=headers, partition=partition)
        self._write_online(online)
        if await_kafka:
            self.producer.flush()
        EVENTS_IN.labels(stage.name).inc(n_events)
        EVENTS_APPLIED.labels(stage.name).inc(merged.applied)
        BATCHES.labels(stage.name).inc()
        BATCH_SIZE.labels(stage.name).observe(n_events)
        # Freshness: event time to "written and acknowledged", on a sample (observing 5k values costs ms).
        observe = FRESHNESS.labels(stage.name).observe
        now_ms = time.time() * 1000
        for ms in merged.event_ms[:: max(1, len(merged.event_ms) // 200)]:
            observe(max(0.0, (now_ms - ms) / 1000))
        return merged, waiting

    def checkpoint(self, partitions: set[tuple[str, int]] | None = None) -> None:
        """One round: evict idle entities, write changed rows and checkpoints, wait for Kafka's acks.

        Outputs of the batches applied so far (forwards, dead letters) are acknowledged first: a checkpoint says
        its events are done, and one written while a forward could still fail would make a restore skip an event
        the next stage never got.

        A failure marks the processor poisoned, as a failed batch does: the flush that raised has consumed the
        producer's record of what failed, so a later round (the other stage's, or the last one at stop) would
        flush clean and write a checkpoint past the lost output."""
        try:
            self._checkpoint(partitions)
        except BaseException:
            self.poisoned = True
            raise

    def _checkpoint(self, partitions: set[tuple[str, int]] | None) -> None:
        started = time.perf_counter()
        self.producer.flush()
        stages: dict[str, IngestStage | RekeyStage] = {self.ingest.name: self.ingest, self.rekey.name: self.rekey}
        for key, state in list(self.states.items()):
            if partitions is not None and key not in partitions:
                continue
            name, partition = key
            evicted = state.evict_idle(stages[name].horizon_ms, self.idle_ms)
            for view_name, ids in evicted.items():
                EVICTED.labels(view_name).inc(len(ids))
            tombstones = {view_name: list(ids) for view_name, ids in evicted.items()}
            for view_name, stale in self.stale.pop(key, {}).items():  # rows of an abandoned state, not rewritten
                live = state.views[view_name].rows if view_name in state.views else {}
                tombstones.setdefault(view_name, []).extend(i for i in stale if i not in live)
            recovery = self.recovery[name]
            rows, size = recovery.state_log.write(
                partition, state, topic_id=recovery.topic_id, fingerprint=recovery.fingerprint, tombstones=tombstones
            )
            CHECKPOINT_ROWS.labels(name).inc(rows)
            CHECKPOINT_BYTES.labels(name).inc(size)
        self.producer.flush()
        CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        self.repair_online()
        views: dict[str, list[Any]] = defaultdict(list)
        for state in self.states.values():
            for view_name, view in state.views.items():
                views[view_name].append(view)
        for view_name, held in views.items():
            ENTITIES.labels(view_name).set(sum(len(v) for v in held))
            STATE_BYTES.labels(view_name).set(sum(v.nbytes for v in held))

    def drop(self, partitions: set[tuple[str, int]]) -> None:
        for key in partitions:
            self.states.pop(key, None)
            self.stale.pop(key, None)
