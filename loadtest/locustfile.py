"""Locust load test through Kafka: score requests in, predictions out, timed end to end.

``ScoreRequestUser`` produces Avro score requests to the score-requests topic and waits for the prediction
with the same ``request_id`` on the predictions topic; the round trip (produce to prediction consumed) is
what Locust's statistics, percentiles, CSV and HTML report show. A prediction that does not arrive within
``--score-timeout`` seconds is a failure. ``TransactionUser`` produces raw transactions and reports the
broker's acknowledgement latency. With ``--echo`` the score requests are read back from their own topic
instead (no worker involved): the bare Kafka round trip through the same plumbing, a transport baseline.

Kafka I/O never blocks gevent's event loop: confluent-kafka is C (librdkafka threads), so it is only called
without waiting (``produce``, ``poll(0)``, ``consume(timeout=0)``). Each Locust process has one producer, one
reply consumer and one pump greenlet that serves both; users wait on a :class:`gevent.event.AsyncResult`.
Only ``streamscore.kafka``, ``streamscore.serde`` and ``streamscore.settings`` are imported: gevent's monkey-patching
would break faust and Feast, which this process never loads.

Settings come from the ``STREAMSCORE_*`` environment, like every service; load knobs are Locust options
(also ``LOCUST_*`` variables). See ``loadtest/README.md``.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import confluent_kafka
import gevent
from confluent_kafka import TopicPartition
from gevent.event import AsyncResult
from locust import User, constant_throughput, events, task
from locust.env import Environment
from locust.log import greenlet_exception_logger
from locust.runners import MasterRunner
from locust.stats import CSV_STATS_INTERVAL_SEC

from streamscore.kafka import Consumer, producer_config
from streamscore.serde import Serde, SerdeError
from streamscore.settings import Settings, load_settings

__all__ = ["KafkaHub", "ScoreRequestUser", "TransactionUser"]

log = logging.getLogger("streamscore.loadtest")

REQUEST_TYPE = "kafka"
# The pump's sleep when nothing arrived: the resolution of the measured latency and the pump's CPU cost
# (about 1000 non-blocking polls a second while idle).
PUMP_IDLE_S = 0.001
PUMP_BATCH = 500
METADATA_TIMEOUT_S = 10.0
CLOSE_FLUSH_S = 5.0
CHANNELS = ("POS", "ECOM", "ATM", "MOTO")
CHANNEL_WEIGHTS = (0.6, 0.3, 0.05, 0.05)


class AnswerTimeout(Exception):
    """No answer within the timeout: a prediction lost, dead-lettered or very late, or an unacknowledged send."""


class DeliveryFailed(Exception):
    """The broker did not acknowledge a produced message, or the local producer queue was full."""


Answer = Literal["prediction", "echo", "acknowledgement"]
# A user waits on an AsyncResult that resolves to (perf_counter() when its answer was seen, the answer's bytes).


class KafkaHub:
    """One producer and one reply consumer for a whole Locust process, served by one pump greenlet.

    Users register an :class:`AsyncResult` under their request id in :attr:`pending`; the pump resolves it
    when the reply with that id is consumed (or the acknowledgement arrives, for ``ack`` sends). The reply
    consumer is assigned at the current end of every partition of ``reply_topic`` before the first request,
    so no answer is missed, and it is in a group of its own so it never takes partitions from anyone.
    """

    def __init__(self, settings: Settings, *, reply_topic: str, reply_serde: Serde) -> None:
        self.reply_topic = reply_topic
        self.reply_serde = reply_serde
        self.pending: dict[str, AsyncResult] = {}
        self.failed: BaseException | None = None
        # linger.ms=1 as in the inference worker: a burst leaves as one request, a lone message barely waits.
        self.producer = confluent_kafka.Producer(
            producer_config(settings.kafka, client_suffix="loadtest", **{"linger.ms": 1})
        )
        self.consumer = Consumer(
            settings.kafka, f"loadtest-{uuid.uuid4().hex[:12]}", [], client_suffix="loadtest",
            **{"auto.offset.reset": "latest"},
        )  # fmt: skip
        self._running = True
        self._greenlet: gevent.Greenlet | None = None

    def start(self, request_topics: list[str]) -> None:
        """Assign the reply consumer at the end of its topic, fetch the request topics' metadata, start pumping.

        These calls block the event loop (metadata round trips), which is harmless here: no user runs yet.
        """
        for topic in request_topics:
            _partitions(self.producer, topic)
        assignment = [
            TopicPartition(self.reply_topic, p, self._high(p)) for p in _partitions(self.consumer.raw, self.reply_topic)
        ]
        self.consumer.raw.assign(assignment)
        self._greenlet = gevent.spawn(self._pump)
        self._greenlet.link_exception(greenlet_exception_logger(log))
        log.info("reading replies from the end of %s (%d partitions)", self.reply_topic, len(assignment))

    def _high(self, partition: int) -> int:
        _low, high = self.consumer.raw.get_watermark_offsets(
            TopicPartition(self.reply_topic, partition), timeout=METADATA_TIMEOUT_S
        )
        return int(high)

    def send(self, topic: str, value: bytes, *, key: str, waiter: AsyncResult, ack: bool) -> None:
        """Produce without waiting; ``waiter`` gets the acknowledgement time if ``ack``, else only a failure."""
        if self.failed is not None:
            raise DeliveryFailed(f"the Kafka pump stopped: {self.failed}")

        def on_delivery(err: confluent_kafka.KafkaError | None, _msg: confluent_kafka.Message) -> None:
            if waiter.ready():
                return
            if err is not None:
                waiter.set_exception(DeliveryFailed(err.str()))
            elif ack:
                waiter.set((time.perf_counter(), len(value)))

        try:
            self.producer.produce(topic, value, key=key, on_delivery=on_delivery)
        except BufferError:
            # librdkafka's local queue is full: the broker is not keeping up. Waiting for room would block
            # every user in this process, so this request fails instead and the report shows it.
            raise DeliveryFailed("producer queue full") from None

    def _pump(self) -> None:
        try:
            while self._running:
                messages = self.consumer.poll_batch(PUMP_BATCH, 0)
                seen = time.perf_counter()
                for msg in messages:
                    self._resolve(msg.value(), seen)
                self.producer.poll(0)
                # A full batch means more is queued: only yield to the users before the next one.
                gevent.sleep(0 if len(messages) == PUMP_BATCH else PUMP_IDLE_S)
        except Exception as exc:
            self.failed = exc
            for waiter in list(self.pending.values()):
                if not waiter.ready():
                    waiter.set_exception(DeliveryFailed(f"the Kafka pump stopped: {exc}"))
            raise

    def _resolve(self, value: bytes | None, seen: float) -> None:
        if value is None:
            return
        try:
            record = self.reply_serde.decode(value)
        except SerdeError:
            return  # not ours to judge: someone else's message on a shared topic
        waiter = self.pending.get(record["request_id"])
        if waiter is not None and not waiter.ready():
            waiter.set((seen, len(value)))

    def close(self) -> None:
        """Stop pumping, give in-flight messages a few seconds to be acknowledged, close both clients."""
        self._running = False
        if self._greenlet is not None:
            self._greenlet.join(1.0)
            self._greenlet.kill()
        self.producer.flush(CLOSE_FLUSH_S)
        self.consumer.close()


def _partitions(client: confluent_kafka.Producer | confluent_kafka.Consumer, topic: str) -> list[int]:
    metadata = client.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        why = metadata.error.str() if metadata is not None and metadata.error is not None else "no partitions"
        raise RuntimeError(f"topic {topic!r} is not usable ({why}); create it first: streamscore topics create")
    return sorted(metadata.partitions)


class _Run:
    """What the users of this process share: the settings and the hub (both set on Locust's ``init``)."""

    settings: Settings | None = None
    hub: KafkaHub | None = None


_run = _Run()


def _hub() -> KafkaHub:
    if _run.hub is None:
        raise RuntimeError("the Kafka hub is not running (the locustfile's init listener did not run)")
    return _run.hub


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("streamscore", "Kafka load (brokers and topics: STREAMSCORE_* variables)")
    group.add_argument(
        "--rate", type=float, default=0.0, env_var="LOCUST_RATE",
        help="Total requests/s over all users, split evenly (RATE / users each); 0 = unpaced, each user sends "
        "its next request as soon as the previous one is answered",
    )  # fmt: skip
    group.add_argument(
        "--score-timeout", type=float, default=5.0, env_var="LOCUST_SCORE_TIMEOUT",
        help="Seconds to wait for a prediction (or an acknowledgement) before the request counts as failed",
    )  # fmt: skip
    group.add_argument(
        "--echo", action="store_true", default=False, env_var="LOCUST_ECHO",
        help="Read score requests back from their own topic instead of predictions: the bare Kafka round "
        "trip, no worker (point STREAMSCORE_TOPICS__SCORE_REQUESTS at a topic no worker reads)",
    )  # fmt: skip
    group.add_argument(
        "--id-users", type=int, default=1000, env_var="LOCUST_ID_USERS",
        help="Card holders to draw from (the generator's default population)",
    )  # fmt: skip
    group.add_argument(
        "--id-merchants", type=int, default=200, env_var="LOCUST_ID_MERCHANTS", help="Merchants to draw from"
    )
    group.add_argument(
        "--user-id-format", default="u-{:07d}", env_var="LOCUST_USER_ID_FORMAT",
        help="str.format template of a user id (the generator's ids, so the stream processor has their features)",
    )  # fmt: skip
    group.add_argument(
        "--merchant-id-format", default="m-{:06d}", env_var="LOCUST_MERCHANT_ID_FORMAT",
        help="str.format template of a merchant id",
    )  # fmt: skip


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    """Connect before the test starts, so no user waits for metadata and the first replies are not missed.

    A master only coordinates (its workers each build their own hub); an error here makes Locust exit 1.
    """
    if isinstance(environment.runner, MasterRunner):
        return
    options = environment.parsed_options
    if options is None:  # Locust used as a library: no options, no hub
        return
    _check(options)
    settings = load_settings()
    topics = settings.topics
    echo = bool(options.echo)
    hub = KafkaHub(
        settings,
        reply_topic=topics.score_requests if echo else topics.predictions,
        reply_serde=Serde("score_request" if echo else "prediction"),
    )
    selected = environment.user_classes or []
    request_topics = [topics.score_requests] if not selected or ScoreRequestUser in selected else []
    if TransactionUser in selected:
        request_topics.append(topics.transactions)
    hub.start(request_topics)
    _run.settings, _run.hub = settings, hub


def _check(options: Any) -> None:
    """Reject knobs that would fail every request one by one, once and with a clear message."""
    if options.rate < 0 or options.score_timeout <= 0:
        raise ValueError(f"--rate must be >= 0 and --score-timeout > 0, got {options.rate} and {options.score_timeout}")
    if options.id_users < 1 or options.id_merchants < 1:
        raise ValueError(f"--id-users and --id-merchants must be >= 1, got {options.id_users}, {options.id_merchants}")
    for template in (options.user_id_format, options.merchant_id_format):
        template.format(0)  # IndexError/ValueError/KeyError here names the bad template in the traceback


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    hub, _run.hub = _run.hub, None
    if hub is not None:
        hub.close()
    options = environment.parsed_options
    if options is not None and getattr(options, "csv_prefix", None):
        # Locust rewrites <prefix>_stats.csv once a second and not once more at the end, so the file would miss
        # the last second of requests; one more interval lets its writer put the final numbers in.
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)


class KafkaUser(User):
    """Shared pacing and round-trip reporting of the Kafka users."""

    abstract = True

    def wait_time(self) -> float:
        """``constant_throughput(RATE / users)``, computed per call: the rate is a command-line option and the
        number of users can change during a run (web UI), so neither is known when the class is defined."""
        rate = float(self.options.rate)
        if rate <= 0:
            return 0.0
        users = max(int(self.options.num_users or 1), 1)
        pace: Callable[[User], float] = constant_throughput(rate / users)
        return pace(self)

    @property
    def options(self) -> Any:
        """Locust's parsed command line, this locustfile's options included (the init listener needs them too)."""
        options = self.environment.parsed_options
        if options is None:
            raise RuntimeError("these users need Locust's command line (run them with the locust command)")
        return options

    @property
    def timeout_s(self) -> float:
        return float(self.options.score_timeout)

    def round_trip(self, name: str, topic: str, key: str, request_id: str, value: bytes, *, answer: Answer) -> None:
        """Send ``value`` and report to Locust how long its ``answer`` took: the broker's acknowledgement, or
        the message with ``request_id`` on the reply topic; no answer within the timeout is a failure."""
        hub = _hub()
        ack = answer == "acknowledgement"
        waiter: AsyncResult = AsyncResult()
        if not ack:
            hub.pending[request_id] = waiter
        started = time.perf_counter()
        size = 0
        exc: Exception | None = None
        try:
            hub.send(topic, value, key=key, waiter=waiter, ack=ack)
            answered, size = waiter.get(timeout=self.timeout_s)
            elapsed = answered - started
        except gevent.Timeout:
            elapsed = time.perf_counter() - started
            exc = AnswerTimeout(f"no {answer} within {self.timeout_s:g} s")
        except DeliveryFailed as failed:
            elapsed, exc = time.perf_counter() - started, failed
        finally:
            hub.pending.pop(request_id, None)
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=name, response_time=elapsed * 1000.0, response_length=size,
            exception=exc, context={},
        )  # fmt: skip

    def entity(self) -> tuple[str, str]:
        """A user and a merchant id in the generator's format, so some of them have online features."""
        o = self.options
        user = o.user_id_format.format(random.randrange(o.id_users))
        return user, o.merchant_id_format.format(random.randrange(o.id_merchants))


def _amount() -> float:
    """Heavy-tailed like card spending: most small, a few large (mean 60)."""
    return round(random.gammavariate(2.0, 30.0), 2)


def _channel() -> str:
    return random.choices(CHANNELS, CHANNEL_WEIGHTS)[0]


class ScoreRequestUser(KafkaUser):
    """A card network asking for a fraud score before authorising: request out, prediction back."""

    def on_start(self) -> None:
        echo = bool(self.options.echo)
        # A baseline run must never be mistaken for the pipeline: its requests have a name of their own.
        self.request_name: str = "echo" if echo else "score"
        self.answer: Answer = "echo" if echo else "prediction"
        self.serde = Serde("score_request")

    @task
    def score(self) -> None:
        settings = _run.settings
        assert settings is not None
        user_id, merchant_id = self.entity()
        request_id = f"lt-{uuid.uuid4().hex}"
        request = {
            "request_id": request_id, "user_id": user_id, "merchant_id": merchant_id, "amount": _amount(),
            "currency": "EUR", "country": "DE", "channel": _channel(), "request_time": datetime.now(tz=UTC),
            "context": {"source": "locust"},
        }  # fmt: skip
        # Keyed by user, as the generator does: one card's requests stay in order on one partition.
        value = self.serde.encode(request)
        self.round_trip(
            self.request_name, settings.topics.score_requests, user_id, request_id, value, answer=self.answer
        )


class TransactionUser(KafkaUser):
    """The transaction feed the stream processor turns into features: reports the broker acknowledgement."""

    def on_start(self) -> None:
        self.serde = Serde("transaction")

    @task
    def transaction(self) -> None:
        settings = _run.settings
        assert settings is not None
        user_id, merchant_id = self.entity()
        event_id = f"lt-{uuid.uuid4().hex}"
        record = {
            "event_id": event_id, "user_id": user_id, "merchant_id": merchant_id, "amount": _amount(),
            "currency": "EUR", "country": "DE", "channel": _channel(), "event_time": datetime.now(tz=UTC),
            "is_fraud": None,
        }  # fmt: skip
        value = self.serde.encode(record)
        self.round_trip("transaction", settings.topics.transactions, user_id, event_id, value, answer="acknowledgement")
