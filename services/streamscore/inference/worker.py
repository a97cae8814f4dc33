"""The inference worker: score requests from Kafka in batches straight from the poll, predictions back to Kafka.

Stateless: everything it needs is in Kafka (requests, offsets), Redis (features) and the registry (the
model), so scaling out is starting another process in the same group. Per batch:

1. take what has arrived as soon as a request is there, up to ``max_batch`` (waiting ``max_delay_ms`` after the
   first for more only when set: at low rates a fixed wait is pure latency, under load batches fill anyway);
2. decode and validate; what fails goes to the dead-letter topic with its reason (never dropped);
3. score the rest (:class:`~streamscore.inference.scorer.Scorer`: one Redis round trip, one ONNX call);
4. publish one prediction per request, keyed by request id, with the request's headers (trace context);
5. commit the input offsets only after every prediction and dead letter of the batch is acknowledged
   (at-least-once), or atomically with them in a Kafka transaction (exactly-once).

A failure in steps 3 to 5 never skips input: the worker seeks back to the batch and polls it again with
backoff, so a broker or Redis outage delays predictions without losing or committing anything early, and
the worker keeps polling (it stays in its group). A batch that keeps failing for another reason is scored
one request at a time, so only the requests that cannot be scored go to the dead-letter topic.
The champion alias is polled between batches; a new model is loaded and warmed beside the old one and
swapped in between two batches. Every published batch feeds the drift monitor of the model that scored it
(:class:`~streamscore.inference.reports.DriftReporter`); its reports go out with the batches, in the same
transaction in exactly-once mode. SIGTERM finishes, publishes and commits the batch in hand, then exits.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import confluent_kafka
import numpy as np
import redis
from prometheus_client import Counter, Gauge, Histogram

from streamscore.heap import freeze_startup_heap, refreeze_heap
from streamscore.inference.drift import compile_kernels
from streamscore.inference.instance import Instance, claim_instance
from streamscore.inference.reports import DriftReporter
from streamscore.inference.scorer import ScoredBatch, Scorer
from streamscore.kafka import Consumer, DeadLetterPublisher, DeliveryError, Producer, ensure_topics, next_offsets
from streamscore.models.loader import load_model
from streamscore.models.registry import CHAMPION, Registry, RegistryError
from streamscore.models.runtime import CPU, ScoringSession, bucket_sizes
from streamscore.serde import Serde, SerdeError
from streamscore.settings import Settings
from streamscore.store.reader import OnlineReader

__all__ = ["InferenceWorker"]

log = logging.getLogger(__name__)

_MS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
REQUESTS = Counter("streamscore_inference_requests", "Score requests taken from Kafka", ["outcome"])
BATCH_SIZE = Histogram(
    "streamscore_inference_batch_size",
    "Requests per scored batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
LATENCY = Histogram("streamscore_inference_latency_ms", "Latency per phase, ms", ["phase"], buckets=_MS_BUCKETS)
FRESHNESS = Histogram(
    "streamscore_inference_feature_freshness_seconds", "Age of the oldest feature a prediction used",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 3600, 86400),
)  # fmt: skip
MISSING = Counter("streamscore_inference_missing_features", "Model inputs filled with their default", ["feature"])
MODEL = Gauge("streamscore_inference_model_info", "The model version being served (value 1)", ["model", "version"])
RETRIES = Counter("streamscore_inference_retries", "Batches rewound and retried after a failure", ["cause"])
LAG = Gauge("streamscore_inference_consumer_lag", "Requests behind the partition end", ["partition"])

OUT_OF_RANGE = Counter(
    "streamscore_inference_out_of_range_inputs", "Model inputs far outside the training data's range", ["feature"]
)
HEADERS_DROPPED = Counter(
    "streamscore_inference_headers_dropped", "Predictions sent without some of their request's headers (too large)"
)

_REQUEST_IDS = ("request_id", "user_id", "merchant_id")
_IDLE_POLL_S = 0.05  # with no request, how often the loop still swaps models, reports drift and reads labels
_MAX_COPIED_HEADER_BYTES = 16_384
DROPPED_HEADERS = "streamscore.headers-dropped"  # on a prediction: how many request headers were left out
_BACKOFF_START_S, _BACKOFF_MAX_S = 0.1, 5.0
_STRIKES = 3  # failures in a row, not outages, before a batch is scored one request at a time


def _transient(exc: BaseException) -> bool:
    """An outage that retrying the same batch outlasts: the broker, Redis, the schema registry."""
    if isinstance(exc, DeliveryError | redis.ConnectionError | redis.TimeoutError):
        return True
    if isinstance(exc, confluent_kafka.KafkaException):
        err = exc.args[0]
        return bool(err.retriable() or err.txn_requires_abort())
    return isinstance(exc, SerdeError) and exc.reason == "registry"


def _copied_headers(headers: list[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
    """A request's headers (trace context) for its prediction, up to a size: a prediction is larger than its
    request, so all of a request's headers could make it too large for the broker."""
    out: list[tuple[str, bytes]] = []
    size = 0
    for name, value in headers or []:
        size += len(name) + len(value or b"")
        if size > _MAX_COPIED_HEADER_BYTES:
            out.append((DROPPED_HEADERS, str(len(headers or []) - len(out)).encode()))
            HEADERS_DROPPED.inc()
            break
        out.append((name, value or b""))
    return out


class InferenceWorker:
    """One worker process; :meth:`run` blocks until :meth:`stop` (or SIGTERM via :meth:`install_signals`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        cfg = settings.inference
        self.instance = Instance(cfg.instance_id, None) if cfg.instance_id else claim_instance(
            settings.data_dir, cfg.group_id
        )  # fmt: skip
        self.worker_id = self.instance.name
        self.topics = settings.topics
        self.bounds = settings.input.bounds
        self.exactly_once = cfg.guarantee == "exactly-once"
        self.consumer = Consumer(
            settings.kafka, cfg.group_id, [self.topics.score_requests], client_suffix="inference",
            **{"group.instance.id": self.worker_id, "session.timeout.ms": int(cfg.session_timeout_s * 1000)},
        )  # fmt: skip
        # A prediction leaves within 1 ms; an operator's linger.ms in STREAMSCORE_KAFKA__EXTRA wins.
        producer_overrides: dict[str, Any] = {} if "linger.ms" in settings.kafka.extra else {"linger.ms": 1}
        if self.exactly_once:
            # A transaction left open by a crash blocks read_committed readers until it times out, unless the
            # restarted worker (same name, see instance.py) fences it first; keep the timeout short anyway.
            producer_overrides.update(
                {"transactional.id": f"{cfg.group_id}-{self.worker_id}", "transaction.timeout.ms": 30_000,
                 "delivery.timeout.ms": 30_000}
            )  # fmt: skip
        self.producer = Producer(settings.kafka, client_suffix="inference", **producer_overrides)
        if self.exactly_once:
            self.producer.raw.init_transactions(30)
        self.dead_letters = DeadLetterPublisher(self.producer, self.topics.dead_letters, stage="inference")
        registry_url = settings.schema_registry_url
        self.requests = Serde("score_request", registry_url=registry_url, subject=f"{self.topics.score_requests}-value")
        self.predictions = Serde("prediction", registry_url=registry_url, subject=f"{self.topics.predictions}-value")
        self._registry: Registry | None = None
        self.reader = OnlineReader(settings, settings.training.feature_service)
        self.drift = DriftReporter(settings, self.worker_id)
        compile_kernels()
        self.scorer = self._scorer(*self._load(None, Registry(settings)))
        self._pending: Future[tuple[ScoringSession, dict[str, Any]] | None] | None = None
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._next_reload = time.monotonic() + cfg.reload_interval_s
        self._stop = threading.Event()
        self._strikes, self._delay = 0, _BACKOFF_START_S
        self.scored = 0

    def _scorer(self, session: ScoringSession, profile: dict[str, Any]) -> Scorer:
        scorer = Scorer(session, self.reader, threshold=self.settings.inference.threshold, profile=profile)
        self.drift.start(session, profile)
        previous = getattr(self, "scorer", None)
        if previous is not None:  # 0 rather than removed: removal is not supported in multi-process mode
            MODEL.labels(previous.session.card.model_name, previous.session.version).set(0)
        MODEL.labels(session.card.model_name, session.version).set(1)
        log.info("serving %s v%s on %s", session.card.model_name, session.version, session.provider)
        return scorer

    @property
    def version(self) -> str:
        return self.scorer.session.version

    def stop(self) -> None:
        self._stop.set()

    def install_signals(self) -> None:
        """SIGTERM/SIGINT finish the batch in hand, then :meth:`run` returns."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    # -- the loop ---------------------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.settings.inference
        try:
            while not self._stop.is_set():
                self._maybe_swap()
                messages = self.consumer.poll_ready(cfg.max_batch, _IDLE_POLL_S, cfg.max_delay_ms / 1000)
                if messages or self.drift.due():
                    self._process(messages)
                self.drift.poll_labels(tp.partition for tp in self.consumer.raw.assignment())
            self._last_report()
        finally:
            self._loader.shutdown(wait=False, cancel_futures=True)
            self.consumer.close()
            self.reader.close()
            self.drift.close()
            self.instance.release()

    def _last_report(self) -> None:
        """On a clean stop, report the open drift window, so every prediction made is in some report."""
        self.drift.close_window()
        try:
            self._publish([])
        except Exception as exc:  # stopping anyway: say so, do not retry
            log.warning("last drift report not published: %s", exc)
            if self.exactly_once:
                self._abort()

    def _process(self, messages: Sequence[confluent_kafka.Message]) -> None:
        """Publish and commit one batch; on failure rewind to it, so the next polls bring it back."""
        try:
            done = self._publish(messages, isolate=self._strikes >= _STRIKES)
        except Exception as exc:
            self._failed(messages, exc)
            return
        self._strikes, self._delay = 0, _BACKOFF_START_S
        if done is not None:
            try:
                self.drift.observe(*done)
            except Exception as exc:  # monitoring must never replay a published batch
                log.error("drift monitor failed on a batch (%s: %s); its predictions are published", type(exc), exc)

    def _failed(self, messages: Sequence[confluent_kafka.Message], exc: Exception) -> None:
        """Nothing of the batch is committed. A transient failure (broker, Redis, schema registry) is retried
        with backoff; any other is retried too, and from the third in a row the batch is scored one request at
        a time, so a request that cannot be scored goes to the dead-letter topic instead of blocking its
        partition. A fatal Kafka error (a fenced producer) stops the worker."""
        cause = type(exc).__name__
        RETRIES.labels(cause).inc()
        if self.exactly_once:
            self._abort()
        if isinstance(exc, confluent_kafka.KafkaException) and exc.args[0].fatal():
            raise exc
        if not _transient(exc):
            self._strikes += 1
        how = "request by request" if self._strikes >= _STRIKES else "whole"
        log.warning("batch of %d failed (%s: %s); retrying it %s in %.1fs", len(messages), cause, exc, how,
                    self._delay)  # fmt: skip
        self._rewind(messages)
        self._stop.wait(self._delay)
        self._delay = min(self._delay * 2, _BACKOFF_MAX_S)

    def _publish(
        self, messages: Sequence[confluent_kafka.Message], *, isolate: bool = False
    ) -> tuple[list[str], ScoredBatch, int] | None:
        """One attempt at a batch: its outputs, then its offsets (in one transaction for exactly-once).

        Returns what the drift monitor is to observe once the batch is done: request ids, scores, time.
        """
        picked_ms = time.time() * 1000
        good: list[tuple[confluent_kafka.Message, dict[str, Any]]] = []
        if self.exactly_once:
            self.producer.raw.begin_transaction()
        decoded: list[tuple[confluent_kafka.Message, dict[str, Any]]] = []
        for msg in messages:
            try:
                decoded.append((msg, self.requests.decode(msg.value())))
            except SerdeError as exc:
                if exc.reason == "registry":  # the registry is down, the request may be fine: retry the batch
                    raise
                self._dead_letter(msg, exc.reason, exc)
        reasons = self.bounds.problems_of([request for _, request in decoded], _REQUEST_IDS)
        for (msg, request), reason in zip(decoded, reasons.tolist(), strict=True):
            if reason is None:
                good.append((msg, request))
            else:
                self._dead_letter(msg, reason)
        good, batch = self._score(good, int(picked_ms), isolate)
        if batch is not None:
            good, batch = self._finite(good, batch)
        if batch is not None:
            self._send_predictions(good, batch, picked_ms)
        reports = self.drift.due_reports()
        for key, value in reports:
            self.producer.send(self.topics.drift, value, key=key)
        if self.exactly_once:
            offsets = next_offsets(messages)
            if offsets:
                group = self.consumer.raw.consumer_group_metadata()
                self.producer.raw.send_offsets_to_transaction(offsets, group, 30)
            self._commit_transaction()
        else:
            self.producer.flush()
            try:
                self.consumer.commit(messages)
            except confluent_kafka.KafkaException as exc:
                # The output is acknowledged; a partition revoked meanwhile is replayed by its new owner
                # (a duplicate prediction, which at-least-once allows). Retrying would publish it again.
                log.warning("commit after a published batch failed (%s); its requests may be scored again", exc)
        self.drift.sent(len(reports))
        self.scored += len(good)
        return None if batch is None else ([r["request_id"] for _, r in good], batch, int(picked_ms))

    def _score(
        self, good: list[tuple[confluent_kafka.Message, dict[str, Any]]], now_ms: int, isolate: bool
    ) -> tuple[list[tuple[confluent_kafka.Message, dict[str, Any]]], ScoredBatch | None]:
        """The batch in one call; or, isolating a poison request, one call per request, dead-lettering those
        that fail for a reason other than an outage."""
        if not good:
            return good, None
        if not isolate:
            return good, self.scorer.score([r for _, r in good], now_ms)
        kept, batches = [], []
        for msg, request in good:
            try:
                batches.append(self.scorer.score([request], now_ms))
            except Exception as exc:
                if _transient(exc):
                    raise
                self._dead_letter(msg, "scoring-failed", exc)
                continue
            kept.append((msg, request))
        return kept, ScoredBatch.concat(batches) if batches else None

    def _finite(
        self, good: list[tuple[confluent_kafka.Message, dict[str, Any]]], batch: ScoredBatch
    ) -> tuple[list[tuple[confluent_kafka.Message, dict[str, Any]]], ScoredBatch | None]:
        """A score that is not a number is no verdict (``NaN >= threshold`` is false: "not fraud"), so its
        request goes to the dead-letter topic, and the drift monitor never sees it."""
        finite = np.isfinite(batch.scores)
        if finite.all():
            return good, batch
        for i in np.flatnonzero(~finite).tolist():
            self._dead_letter(good[i][0], "score-not-finite")
        kept = [g for g, ok in zip(good, finite.tolist(), strict=True) if ok]
        return kept, batch.take(finite) if kept else None

    def _dead_letter(self, msg: confluent_kafka.Message, reason: str, exc: BaseException | None = None) -> None:
        self.dead_letters.publish(msg, reason, exc)
        REQUESTS.labels("dead-letter").inc()

    def _commit_transaction(self) -> None:
        """librdkafka: a commit that timed out may still complete, so the same commit is retried; one that
        needs an abort is raised to :meth:`_failed`, which aborts and rewinds."""
        while True:
            try:
                self.producer.raw.commit_transaction(30)
                return
            except confluent_kafka.KafkaException as exc:
                if not exc.args[0].retriable() or self._stop.is_set():
                    raise
                log.warning("commit_transaction (%s): retrying the commit", exc)

    def _send_predictions(
        self, good: list[tuple[confluent_kafka.Message, dict[str, Any]]], batch: ScoredBatch, picked_ms: float
    ) -> None:
        session = self.scorer.session
        scored_ms = time.time() * 1000
        BATCH_SIZE.observe(len(good))
        LATENCY.labels("features").observe(batch.features_ms)
        LATENCY.labels("inference").observe(batch.inference_ms)
        for i, (msg, request) in enumerate(good):
            request_ms = request["request_time"].timestamp() * 1000
            freshness = int(batch.freshness_ms[i])
            prediction = {
                "request_id": request["request_id"],
                "user_id": request["user_id"],
                "score": float(batch.scores[i]),
                "decision": bool(batch.decisions[i]),
                "threshold": self.scorer.threshold,
                "model_name": session.card.model_name,
                "model_version": session.version,
                "feature_freshness_ms": freshness if freshness >= 0 else None,
                "missing_features": batch.missing_names[i],
                "out_of_range": batch.out_of_range[i],
                "latency": {
                    "queue_ms": max(picked_ms - request_ms, 0.0),
                    "features_ms": batch.features_ms,
                    "inference_ms": batch.inference_ms,
                    "total_ms": max(scored_ms - request_ms, 0.0),
                },
                "request_time": request["request_time"],
                "scored_at": int(scored_ms),
            }
            self.producer.send(
                self.topics.predictions, self.predictions.encode(prediction), key=request["request_id"],
                headers=_copied_headers(msg.headers()),  # type: ignore[arg-type]  # a Message gives a list
            )  # fmt: skip
            LATENCY.labels("queue").observe(prediction["latency"]["queue_ms"])
            LATENCY.labels("total").observe(prediction["latency"]["total_ms"])
            if freshness >= 0:
                FRESHNESS.observe(freshness / 1000)
            for name in batch.missing_names[i]:
                MISSING.labels(name).inc()
            for name in batch.out_of_range[i]:
                OUT_OF_RANGE.labels(name).inc()
        REQUESTS.labels("scored").inc(len(good))

    def _abort(self) -> None:
        try:
            self.producer.raw.abort_transaction(30)
        except confluent_kafka.KafkaException as exc:
            log.warning("abort_transaction failed: %s", exc)
        self.producer.discard_failures()  # the purged messages' reports: the batch is retried whole

    def _rewind(self, messages: Sequence[confluent_kafka.Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic() or "", msg.partition() or 0)
            first[key] = min(first.get(key, msg.offset() or 0), msg.offset() or 0)
        for (topic, partition), offset in first.items():
            try:
                self.consumer.raw.seek(confluent_kafka.TopicPartition(topic, partition, offset))
            except confluent_kafka.KafkaException as exc:  # partition revoked meanwhile: its new owner replays it
                log.info("could not rewind %s[%d]: %s", topic, partition, exc)

    # -- hot reload -------------------------------------------------------------------------------------

    def _maybe_swap(self) -> None:
        """Now and then, ask the loader thread for the champion; swap in what it loaded, between batches.

        The registry lookup (tens of ms on MLflow's sqlite) and the load both run on the loader thread, so the
        scoring loop never waits for them.
        """
        if self._pending is not None and self._pending.done():
            pending, self._pending = self._pending, None
            try:
                loaded = pending.result()
                if loaded is not None:
                    self.scorer = self._scorer(*loaded)
                    refreeze_heap()  # the model it replaced was frozen with the start-up heap
            except Exception as exc:  # a model that does not load never replaces a working one
                log.error("new champion not loaded, still serving v%s: %s", self.version, exc)
        if self._pending is not None or time.monotonic() < self._next_reload:
            return
        self._next_reload = time.monotonic() + self.settings.inference.reload_interval_s
        self._report_lag()
        self._pending = self._loader.submit(self._new_champion, self.version)

    def _new_champion(self, serving: str) -> tuple[ScoringSession, dict[str, Any]] | None:
        """The champion loaded and warmed if it is not the version ``serving``; runs on the loader thread."""
        try:
            champion = self._loader_registry().champion()
        except Exception as exc:
            log.warning("registry unreachable, still serving v%s: %s", serving, exc)
            return None
        if champion is None or str(champion.version) == serving:
            return None
        log.info("champion is now v%s (serving v%s): loading it", champion.version, serving)
        return self._load(champion.version, self._loader_registry())

    def _loader_registry(self) -> Registry:
        if self._registry is None:  # MLflow clients are not shared across threads: this one is the loader's
            self._registry = Registry(self.settings)
        return self._registry

    def _report_lag(self) -> None:
        try:
            assigned = self.consumer.raw.assignment()
            for tp in self.consumer.raw.position(assigned):
                # Cached: the high watermark of the last fetch response, no broker round trip in the loop.
                _, high = self.consumer.raw.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0:
                    LAG.labels(str(tp.partition)).set(max(high - tp.offset, 0))
        except confluent_kafka.KafkaException as exc:
            log.debug("lag not measured: %s", exc)

    def _load(self, version: int | None, registry: Registry) -> tuple[ScoringSession, dict[str, Any]]:
        """The model (``None``: the champion), warmed, and its reference profile."""
        session = load_model(self.settings, CHAMPION if version is None else version, registry=registry)
        if session.provider != CPU:  # a few fixed shapes, so CUDA graphs and TensorRT engines are reused
            session = dataclasses.replace(session, pad_to=bucket_sizes(self.settings.inference.max_batch))
        session.warm((1, self.settings.inference.max_batch))
        try:
            profile = registry.read_json(session.version, "profile.json")
        except RegistryError as exc:
            log.warning("v%s has no reference profile (%s): served without drift monitoring", session.version, exc)
            profile = {}
        return session, profile


def run_workers(settings: Settings) -> None:
    """`streamscore inference run` with one worker in this process (metrics from settings.metrics_port up)."""
    from streamscore.exporter import serve_metrics

    ensure_topics(settings)
    serve_metrics(settings, "inference")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    registry = Registry(settings)
    if registry.champion() is None:
        log.warning("no champion for model %r yet (streamscore train registers one): waiting", settings.model.name)
        while registry.champion() is None:
            if stop.wait(settings.inference.reload_interval_s):
                return
    worker = InferenceWorker(settings)
    worker.install_signals()
    if stop.is_set():  # SIGTERM while the model loaded
        worker.instance.release()
        return
    frozen = freeze_startup_heap()
    log.info("inference worker %s in group %s (%s); %d start-up objects frozen", worker.worker_id,
             settings.inference.group_id, settings.inference.guarantee, frozen)  # fmt: skip
    worker.run()
    log.info("inference worker %s stopped after %d predictions", worker.worker_id, worker.scored)
