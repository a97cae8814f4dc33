"""The kafka engine of `streamscore features run` (``STREAMSCORE_FEATURES__ENGINE=kafka``).

The same :class:`~streamscore.features.processor.FeatureProcessor`, fed by confluent-kafka consumers instead
of faust. faust hands each message through aiokafka and asyncio one event at a time, which caps a process
at a fraction of what librdkafka fetches; here a poll returns whole batches from librdkafka's buffers.
Everything that makes the output right is shared with the faust engine: the stages, the state and its
recovery from Kafka, dead letters, metrics, and the consumer group (both engines commit the same group's
offsets, so a deployment can switch engines and resume where the other stopped).

One consumer per stage, each in its own thread, all in the same group. One consumer for both topics would
let the sticky assignor balance partition *counts* across processes, and it does: one process got every
``transactions`` partition and the other every re-keyed one, which halves the scaling (the ingest stage is
most of the work). With a consumer per topic each topic is balanced on its own. The threads poll in
parallel and take turns in the processor (one lock), as faust's two agents do.

Offsets: a partition's offset is committed only after a checkpoint covering it was acknowledged by Kafka,
and the committed offset is the one the checkpoint records (the state's ``next_offset``), so a commit never
runs ahead of the state a successor will restore. For the same reason a batch does not wait for its forwards
and dead letters to be acknowledged: the checkpoint does, before it writes a state that counts them.
Periodic commits are asynchronous (a lost one only means a longer replay, which rewrites the same values);
those of revoked partitions and of a clean stop are synchronous.

Rebalancing is cooperative (incremental): a process joining or leaving moves only the partitions that must
move; the others keep being processed through the rebalance. A revoked partition is checkpointed and
committed before it is released, and its messages still in a polled batch are dropped, not applied: they
belong to the new owner now.
"""

from __future__ import annotations

import logging
import threading
import time

import confluent_kafka
from confluent_kafka import TopicPartition

from streamscore.features.processor import LAG, FeatureProcessor
from streamscore.features.stages import IngestStage, InRecord, RekeyStage
from streamscore.kafka import Consumer
from streamscore.settings import Settings

__all__ = ["KafkaEngine"]

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.1  # longest wait for a first message; the stop flag and checkpoints are checked between


class KafkaEngine:
    """Both stages, a consumer and a thread each; :meth:`run` blocks until :meth:`stop` or a failure."""

    def __init__(self, settings: Settings, processor: FeatureProcessor) -> None:
        self.processor = processor
        self.stopped = threading.Event()
        lock = threading.Lock()
        self.loops = [
            _StageLoop(settings, processor, stage, topic, lock, self.stopped)
            for stage, topic in (
                (processor.ingest, settings.topics.transactions),
                (processor.rekey, settings.topics.transactions_by_merchant),
            )
        ]

    def stop(self) -> None:
        """Finish the batches in hand, take a last checkpoint, commit it and leave the group."""
        self.stopped.set()
        self.processor.stopping.set()

    def run(self) -> None:
        threads = [threading.Thread(target=loop.run, name=loop.stage.name) for loop in self.loops]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        failed = [loop.failure for loop in self.loops if loop.failure is not None]
        if failed:
            raise failed[0]


class _StageLoop:
    def __init__(
        self,
        settings: Settings,
        processor: FeatureProcessor,
        stage: IngestStage | RekeyStage,
        topic: str,
        lock: threading.Lock,
        stopped: threading.Event,
    ) -> None:
        f = settings.features
        self.settings = settings
        self.processor = processor
        self.stage = stage
        self.topic = topic
        self.lock = lock
        self.stopped = stopped
        self.failure: BaseException | None = None
        self.consumer = Consumer(
            settings.kafka,
            f.group_id,
            [],
            client_suffix=f"features-{stage.name.removeprefix('features-')}",
            **{
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": round(f.session_timeout_s * 1000),
                "heartbeat.interval.ms": round(f.session_timeout_s * 1000 / 3),
                "on_commit": _on_commit,
            },
        )
        self.assigned: set[int] = set()
        self._closing = False
        callbacks = {"on_assign": self._on_assign, "on_revoke": self._on_revoke, "on_lost": self._on_lost}
        self.consumer.raw.subscribe([topic], **callbacks)

    def run(self) -> None:
        f = self.settings.features
        linger_s = f.batch_within_ms / 1000
        next_checkpoint = time.monotonic() + f.checkpoint_interval_s
        try:
            while not self.stopped.is_set():
                messages = self.consumer.poll_ready(f.batch_size, _IDLE_POLL_S, linger_s)
                if messages:
                    self._handle(messages)
                if time.monotonic() >= next_checkpoint:
                    self._checkpoint(None, asynchronous=True)
                    self._report_lag()
                    next_checkpoint = time.monotonic() + f.checkpoint_interval_s
            self._checkpoint(None, asynchronous=False)
        except BaseException as exc:
            self.failure = exc
            self.stopped.set()  # the other stage stops too (even mid-wait for Redis or the registry): the
            self.processor.stopping.set()  # process exits and its partitions move on
        finally:
            self._closing = True  # leaving the group revokes everything: nothing more to checkpoint
            self.consumer.close()

    def _handle(self, messages: list[confluent_kafka.Message]) -> None:
        # A message whose partition was revoked while this poll ran is the new owner's now.
        records = [InRecord.of(m) for m in messages if m.partition() in self.assigned]
        if records:
            with self.lock:
                if not self.processor.poisoned:  # else the other stage failed mid-batch, and all stop
                    self.processor.handle(self.stage, records, await_kafka=False)

    def _checkpoint(self, partitions: set[int] | None, *, asynchronous: bool) -> None:
        """Checkpoint this stage's partitions (all, or ``partitions``), then commit the offsets they record."""
        with self.lock:
            if self.processor.poisoned:
                return  # a state may hold part of a failed batch: nothing of it may be recorded as applied
            states = self.processor.states
            keys = {k for k in states if k[0] == self.stage.name and (partitions is None or k[1] in partitions)}
            if not keys:
                return
            self.processor.checkpoint(keys)
            offsets = [TopicPartition(self.topic, p, states[(name, p)].next_offset) for name, p in sorted(keys)]
        if asynchronous:
            self.consumer.raw.commit(offsets=offsets, asynchronous=True)
            return
        try:
            self.consumer.raw.commit(offsets=offsets, asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            _commit_failed(exc.args[0], offsets)

    def _report_lag(self) -> None:
        for (name, partition), state in list(self.processor.states.items()):
            if name != self.stage.name:
                continue
            _, high = self.consumer.raw.get_watermark_offsets(TopicPartition(self.topic, partition), cached=True)
            if high >= 0:
                LAG.labels(self.topic, str(partition)).set(max(0, high - state.next_offset))

    def _on_assign(self, _: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        # States are recovered lazily, by a partition's first batch: a recovery that reads a long state topic
        # must not hold up the partitions already flowing.
        self.assigned |= {tp.partition for tp in partitions}
        if partitions:
            log.info("assigned %s", _names(partitions))

    def _on_revoke(self, _: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        if partitions and not self._closing:
            self._checkpoint({tp.partition for tp in partitions}, asynchronous=False)
        self._release(partitions)

    def _on_lost(self, _: confluent_kafka.Consumer, partitions: list[TopicPartition]) -> None:
        """Taken away without a revoke (this process missed its session): another owns them already, so no
        checkpoint and no commit from here; what was applied since the last commit is replayed there."""
        log.warning("lost %s to another process without a clean handover", _names(partitions))
        self._release(partitions)

    def _release(self, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self.assigned -= gone
        with self.lock:
            self.processor.drop({(self.stage.name, p) for p in gone})
        if partitions:
            log.info("released %s", _names(partitions))


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions, key=lambda t: (t.topic, t.partition)))


def _on_commit(error: confluent_kafka.KafkaError | None, offsets: list[TopicPartition]) -> None:
    if error is not None:
        _commit_failed(error, offsets)


def _commit_failed(error: confluent_kafka.KafkaError, offsets: list[TopicPartition]) -> None:
    """Not fatal: the checkpoints are written, and a state ahead of the committed offset is restored as it is
    (its records up to the checkpoint are skipped), so a lost commit costs a re-read, never a wrong window."""
    log.warning("offset commit failed (%s) for %s; the next commit or owner covers it", error.str(), _names(offsets))
