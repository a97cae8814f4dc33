"""The only place that turns settings into confluent-kafka (librdkafka) configuration dictionaries.

Keeping every librdkafka key here means a security or tuning change is made once and reaches producers,
consumers and the admin client alike.
"""

from __future__ import annotations

import logging
from typing import Any

from streamscore.kafka.partitioner import LIBRDKAFKA_NAMES
from streamscore.settings import KafkaSettings

__all__ = ["admin_config", "consumer_config", "producer_config"]

# librdkafka writes to stderr by default; through logging its lines get our format and level filter.
_LIBRDKAFKA_LOG = logging.getLogger("streamscore.librdkafka")


def _common(kafka: KafkaSettings, client_suffix: str) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": f"{kafka.client_id}-{client_suffix}",
        "security.protocol": kafka.security_protocol,
        "logger": _LIBRDKAFKA_LOG,
    }
    if kafka.sasl_mechanism:
        conf["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username:
        conf["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password:
        conf["sasl.password"] = kafka.sasl_password.get_secret_value()
    for key, path in (
        ("ssl.ca.location", kafka.ssl_ca_location),
        ("ssl.certificate.location", kafka.ssl_certificate_location),
        ("ssl.key.location", kafka.ssl_key_location),
    ):
        if path is not None:
            conf[key] = str(path)
    if kafka.ssl_key_password:
        conf["ssl.key.password"] = kafka.ssl_key_password.get_secret_value()
    return conf


def producer_config(kafka: KafkaSettings, *, client_suffix: str = "producer", **overrides: Any) -> dict[str, Any]:
    """Idempotent producer: acks=all with retries and ordering kept per partition (≤5 in flight).

    ``linger.ms`` is small but not zero so a burst of produce() calls leaves as one request; callers that
    need lower latency pass ``**{"linger.ms": 0}``.
    """
    conf = _common(kafka, client_suffix)
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 2,
            "compression.type": "lz4",
            "delivery.timeout.ms": 120_000,
            "partitioner": LIBRDKAFKA_NAMES[kafka.partitioner],
        }
    )
    conf.update(kafka.extra)
    conf.update(overrides)
    return conf


def consumer_config(
    kafka: KafkaSettings, group_id: str, *, client_suffix: str = "consumer", **overrides: Any
) -> dict[str, Any]:
    """Manual-commit consumer: offsets move only when the caller commits after its output is acknowledged.

    ``enable.auto.offset.store`` is off as well, so even a stray auto-commit could never commit a message the
    caller has not finished.
    """
    conf = _common(kafka, client_suffix)
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "isolation.level": "read_committed",
        }
    )
    conf.update(kafka.extra)
    conf.update(overrides)
    return conf


def admin_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    conf = _common(kafka, "admin")
    conf.update(kafka.extra)
    conf.update(overrides)
    return conf
