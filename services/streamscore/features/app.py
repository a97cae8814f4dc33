"""The faust engine of `streamscore features run` (the default; ``kafka_engine.py`` is the other).

faust gives us the consumer group, partition assignment and batching (``noack_take``); the work of a batch
happens in :class:`~streamscore.features.processor.FeatureProcessor`. Events are acknowledged to faust (which
commits them) only after a checkpoint covering them is acknowledged by Kafka. A crash replays from the last
checkpoint; online writes are idempotent, so the replay rewrites the same values.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP
from mode.supervisors import CrashingSupervisor

from streamscore.features.plan import ViewPlan
from streamscore.features.processor import LAG, FeatureProcessor
from streamscore.features.rules import EventRules
from streamscore.features.stages import IngestStage, InRecord, RekeyStage
from streamscore.settings import Settings

__all__ = ["build_app", "in_records"]


@dataclass
class _Pending:
    """Events a stream handed over and the processor applied, waiting for a checkpoint to be acknowledged."""

    stream: Any
    events: list[Any] = field(default_factory=list)


def in_records(events: Sequence[Any]) -> list[InRecord]:
    """faust events as the stages' records (faust gives header values as ``None`` where Kafka had none)."""
    records = []
    for event in events:
        m = event.message
        headers = [(k, v if isinstance(v, bytes) else (v or b"")) for k, v in (m.headers or [])]
        records.append(InRecord(m.topic, m.partition, m.offset, m.key, m.value, headers))
    return records


def _faust_broker(settings: Settings) -> dict[str, Any]:
    """faust's own (aiokafka) connection settings; SASL/SSL beyond PLAINTEXT are not wired yet."""
    if settings.kafka.security_protocol != "PLAINTEXT":
        raise NotImplementedError("the feature processor supports PLAINTEXT brokers only for now")
    return {"broker": [f"kafka://{a.strip()}" for a in settings.kafka.bootstrap_servers.split(",")]}


class _FeatureApp(faust.App):
    """A clean stop ends with a checkpoint, so a restart resumes exactly there.

    faust's stop waits until every message a stream has taken is acknowledged (``stream_wait_empty``), but
    ours are acknowledged only once a checkpoint holds them, and the checkpoint timer stops first: the wait
    never ended. So the stop takes the last checkpoint and acknowledges what it holds itself, then lets faust
    commit the acknowledged offsets without waiting for events still in stream buffers: those were not
    applied, and a restart reads them again.
    """

    final_checkpoint: Callable[[], Awaitable[None]] | None = None
    processor: FeatureProcessor | None = None

    async def on_stop(self) -> None:
        if self.processor is not None:
            self.processor.stopping.set()
        if self.final_checkpoint is not None:
            await self.final_checkpoint()
        self.conf.stream_wait_empty = False
        await super().on_stop()


def build_app(settings: Settings, plans: Sequence[ViewPlan], rules: EventRules) -> tuple[faust.App, FeatureProcessor]:
    f = settings.features
    app = _FeatureApp(
        f.group_id,
        **_faust_broker(settings),
        value_serializer="raw",
        key_serializer="raw",
        # faust's own files (nothing of ours: state lives in Kafka) go to a scratch directory of this process.
        datadir=tempfile.mkdtemp(prefix="streamscore-faust-"),
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.topics.partitions,
        topic_allow_declare=True,  # faust declares its own internal topics (leader election)
        consumer_auto_offset_reset="earliest",
        broker_commit_every=10_000_000,
        broker_commit_interval=1.0,
        # faust's 60 s default keeps a crashed worker's partitions idle for a minute before reassignment.
        broker_session_timeout=f.session_timeout_s,
        broker_heartbeat_interval=f.session_timeout_s / 3,
        stream_buffer_maxsize=max(4096, 2 * f.batch_size),
        # A batch that fails must stop the worker: faust's default supervisor would restart the agent past
        # the failed (unacknowledged) events, and later acknowledgements would commit over them.
        agent_supervisor=CrashingSupervisor,
        loghandlers=[],
    )
    processor = FeatureProcessor(settings, plans, rules)
    within = f.batch_within_ms / 1000
    pending: dict[str, _Pending] = {}
    lock = asyncio.Lock()

    async def ack_all() -> None:
        for held in pending.values():
            events, held.events = held.events, []
            for event in events:
                await held.stream.ack(event)

    def agent_for(topic_name: str, stage: IngestStage | RekeyStage) -> None:
        topic = app.topic(topic_name, value_type=bytes, key_type=bytes, value_serializer="raw", key_serializer="raw")

        async def agent(stream: Any) -> None:
            held = pending.setdefault(stage.name, _Pending(stream))
            held.stream = stream
            async for events in stream.noack_take(f.batch_size, within=within):
                async with lock:
                    records = in_records(events)
                    await asyncio.get_running_loop().run_in_executor(None, processor.handle, stage, records)
                    held.events.extend(events)

        agent.__name__ = f"{stage.name.replace('-', '_')}_agent"
        app.agent(topic, name=agent.__name__)(agent)

    agent_for(settings.topics.transactions, processor.ingest)
    agent_for(settings.topics.transactions_by_merchant, processor.rekey)

    topic_of = {
        processor.ingest.name: settings.topics.transactions,
        processor.rekey.name: settings.topics.transactions_by_merchant,
    }

    async def checkpoint_and_ack() -> None:
        async with lock:
            if processor.poisoned:
                return
            await asyncio.get_running_loop().run_in_executor(None, processor.checkpoint)
            await ack_all()

    app.final_checkpoint = checkpoint_and_ack
    app.processor = processor

    @app.timer(f.checkpoint_interval_s)  # type: ignore[untyped-decorator]
    async def checkpoint_then_ack() -> None:
        await checkpoint_and_ack()
        for (stage, partition), state in list(processor.states.items()):
            high = app.consumer.highwater(TP(topic_of[stage], partition))
            if high is not None:
                LAG.labels(topic_of[stage], str(partition)).set(max(0, high - state.next_offset))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        stage_of = {
            settings.topics.transactions: processor.ingest.name,
            settings.topics.transactions_by_merchant: processor.rekey.name,
        }
        keys = {(stage_of[tp.topic], tp.partition) for tp in revoked if tp.topic in stage_of}
        async with lock:
            if not processor.poisoned:
                # Every partition, not only the revoked ones: ack_all commits the offsets of all of them.
                await asyncio.get_running_loop().run_in_executor(None, processor.checkpoint)
                await ack_all()
            processor.drop(keys)

    return app, processor
