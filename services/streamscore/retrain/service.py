"""`streamscore retrain-on-drift`: drift reports in, retrained and gated champions out.

The loop reads the drift topic as one consumer group, feeds each report to the :class:`DriftPolicy`, and on
a trigger retrains in this process: the recent window is read back from the transactions log, backfilled
into the offline tables with the same feature definitions, and handed to ``streamscore train``, whose gate
decides the promotion. Workers hot-reload a new champion by themselves. Each retrain is an MLflow run in
the model's experiment (see :mod:`streamscore.retrain.history`) and every step is counted in metrics.

Reports of an open streak are committed only once the streak ends (a quiet report, or the retrain it
triggered finished), so a crash replays them and rebuilds the streak, and an interrupted retrain runs again
rather than the drift being forgotten; the cooldown is not kept across restarts. A report that does not
decode goes to the dead-letter topic. MLflow being down costs the record of a retrain, never the service.
A new group starts at the newest report: older ones describe a past it should not act on now.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from streamscore.errors import StreamscoreError
from streamscore.kafka import Consumer, DeadLetterPublisher, DeliveryError, Producer, ensure_topics
from streamscore.models.registry import Registry
from streamscore.retrain.history import KIND_TAG
from streamscore.retrain.metrics import DECISIONS, LAST_DECISION, STREAK
from streamscore.retrain.policy import DriftPolicy, Trigger
from streamscore.retrain.window import export_window
from streamscore.serde import Serde, SerdeError
from streamscore.settings import Settings

__all__ = ["RetrainOutcome", "Retrainer", "retrain_now", "run_retrainer"]

log = logging.getLogger(__name__)

_CHAMPION_TTL_S = 5.0  # the champion alias is re-read at most this often
_REGISTRY_BACKOFF_S = 2.0
_MAX_HELD = 10_000  # reports held uncommitted for an open streak, at most (a worker gone mid-streak)


@dataclass(frozen=True)
class RetrainOutcome:
    outcome: str  # promoted | rejected | failed
    version: int | None
    detail: str
    seconds: float


def _count(decision: str) -> None:
    DECISIONS.labels(decision).inc()
    LAST_DECISION.labels(decision).set(time.time())


def _retrain(settings: Settings, stamp: str) -> RetrainOutcome:
    from streamscore.features import backfill, load_plans, rules_for
    from streamscore.training import train

    started = time.monotonic()
    try:
        window = export_window(settings, settings.data_dir / "retrain" / f"{stamp}.parquet")
        log.info("window %s .. %s: %d transactions (%d frauds in the window)",
                 window.start.isoformat(), window.end.isoformat(), window.rows, window.frauds)  # fmt: skip
        plans = load_plans(settings)
        backfill(window.path, plans, settings.data_dir / "offline", start=window.warmup_start, end=window.end,
                 rules=rules_for(settings, plans))  # fmt: skip
        result = train(settings, events=window.path, start=window.start, end=window.end,
                       kind=settings.retrain.model, seed=0)  # fmt: skip
    except Exception as exc:  # a failed retrain is recorded and reported; the service keeps watching
        if not isinstance(exc, StreamscoreError):
            log.exception("retrain failed")
        return RetrainOutcome("failed", None, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
    finally:
        (settings.data_dir / "retrain" / f"{stamp}.parquet").unlink(missing_ok=True)
    outcome = "promoted" if result.promoted else "rejected"
    return RetrainOutcome(outcome, result.version, "; ".join(result.gate.reasons), time.monotonic() - started)


def retrain_now(settings: Settings, reason: str) -> RetrainOutcome:
    """One retrain on the recent window, recorded as an MLflow run; never raises for a failed retrain."""
    registry = Registry(settings)
    _count("triggered")
    log.info("retraining: %s", reason)
    stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S")
    outcome: RetrainOutcome | None = None
    try:
        with registry.start_run(f"retrain-{stamp}", tags={**KIND_TAG, "streamscore.trigger": reason}) as run_id:
            outcome = _retrain(settings, stamp)
            version = {"streamscore.version": str(outcome.version)} if outcome.version is not None else {}
            tags = {"streamscore.outcome": outcome.outcome, "streamscore.detail": outcome.detail[:4000], **version}
            registry.set_tags(run_id, tags)
    except StreamscoreError as exc:  # MLflow unreachable: the decision stands, its record is what failed
        log.error("could not record the retrain in MLflow: %s", exc)
        outcome = outcome or RetrainOutcome("failed", None, str(exc), 0.0)
    _count(outcome.outcome)
    log.info("retrain %s%s in %.0fs: %s", outcome.outcome,
             f" (v{outcome.version})" if outcome.version else "", outcome.seconds, outcome.detail)  # fmt: skip
    return outcome


class Retrainer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = DriftPolicy(settings.retrain)
        self.registry = Registry(settings)
        self.serde = Serde("drift_report", registry_url=settings.schema_registry_url,
                           subject=f"{settings.topics.drift}-value")  # fmt: skip
        # A retrain can take longer than librdkafka's default 5 min between polls: do not leave the group.
        self.consumer = Consumer(
            settings.kafka, settings.retrain.group_id, [settings.topics.drift], client_suffix="retrain",
            **{"auto.offset.reset": "latest", "max.poll.interval.ms": 6 * 3600 * 1000},
        )  # fmt: skip
        self.producer = Producer(settings.kafka, client_suffix="retrain")
        self.dead_letters = DeadLetterPublisher(self.producer, settings.topics.dead_letters, stage="retrain")
        self.outcomes: list[RetrainOutcome] = []
        self._held: list[Any] = []  # polled, not yet committed
        self._stop = threading.Event()
        self._champion: tuple[float, str | None] = (float("-inf"), None)

    def stop(self) -> None:
        self._stop.set()

    def champion(self) -> str | None:
        read_at, version = self._champion
        if time.monotonic() - read_at > _CHAMPION_TTL_S:
            try:
                info = self.registry.champion()
            except StreamscoreError as exc:  # MLflow down: judge by the last champion seen, ask again later
                log.warning("registry unreachable, assuming the champion is still v%s: %s", version, exc)
                self._champion = (time.monotonic(), version)
                return version
            version = None if info is None else str(info.version)
            self._champion = (time.monotonic(), version)
        return version

    def step(self, timeout_s: float = 0.5) -> Trigger | None:
        """One poll: reports through the policy, a retrain if one triggers, then the offsets committed.

        While a streak is open its reports stay uncommitted, so a crash replays them and the streak is
        rebuilt (a retrain it triggered, interrupted, runs again); they are committed once the streak ends.
        """
        messages = self.consumer.poll_batch(500, timeout_s)
        trigger = None
        for i, msg in enumerate(messages):
            try:
                report: dict[str, Any] = self.serde.decode(msg.value() or b"")
            except SerdeError as exc:
                if exc.reason == "registry":  # the schema registry is unreachable: not the report's fault
                    log.warning("schema registry unreachable, reading the drift reports again shortly: %s", exc)
                    self._rewind(messages[i:])
                    messages = messages[:i]
                    time.sleep(_REGISTRY_BACKOFF_S)
                    break
                self.dead_letters.publish(msg, exc.reason, exc)
                continue
            trigger = self.policy.observe(report, self.champion(), time.monotonic()) or trigger
        self._held.extend(messages)
        if trigger is not None:
            self.outcomes.append(retrain_now(self.settings, trigger.describe()))
            self.policy.cooldown(time.monotonic())
            self._champion = (float("-inf"), None)
        STREAK.set(self.policy.streak)
        if self._held and (self.policy.streak == 0 or len(self._held) >= _MAX_HELD):
            self._commit()
        return trigger

    def _commit(self) -> None:
        """Dead letters acknowledged, then the offsets committed. A broker that fails either costs a retry,
        never the service: undelivered dead letters mean reading the held reports again (the policy ignores
        the ones it has seen), a failed commit is tried again next round."""
        try:
            self.producer.flush()
        except DeliveryError as exc:
            log.warning("dead letters not delivered (%s); reading %d reports again", exc, len(self._held))
            self._rewind(self._held)
            self._held = []
            self._stop.wait(_REGISTRY_BACKOFF_S)
            return
        try:
            self.consumer.commit(self._held)
        except KafkaException as exc:
            log.warning("commit of %d drift reports failed (%s); trying again next round", len(self._held), exc)
            self._stop.wait(_REGISTRY_BACKOFF_S)
            return
        self._held = []

    def _rewind(self, messages: list[Any]) -> None:
        """Seek each partition back to the first of ``messages`` on it, so the next poll returns them again."""
        first: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic(), msg.partition())
            first[key] = min(first.get(key, msg.offset()), msg.offset())
        for (topic, partition), offset in first.items():
            self.consumer.raw.seek(TopicPartition(topic, partition, offset))

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self.consumer.close()
            self.producer.flush()


def run_retrainer(settings: Settings) -> None:
    """Blocks until SIGINT/SIGTERM (a retrain in progress finishes first)."""
    from streamscore.exporter import serve_metrics

    ensure_topics(settings)
    for decision in ("triggered", "promoted", "rejected", "failed"):  # 0, not "no data", until the first one
        DECISIONS.labels(decision)
    serve_metrics(settings, "retrain")
    retrainer = Retrainer(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: retrainer.stop())
    policy = settings.retrain
    log.info("watching %s: retrain after %d drifted reports in a row (%d+ inputs each), cooldown %.0fs",
             settings.topics.drift, policy.min_reports, policy.min_drifted_features, policy.cooldown_s)  # fmt: skip
    retrainer.run()
