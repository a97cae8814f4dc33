"""Avro serialisation for every message the pipeline puts on Kafka.

Messages are framed so that any reader can tell which schema wrote them: Avro single-object
encoding (``C3 01`` + CRC-64-AVRO fingerprint) by default, the Confluent wire format (``00`` +
registry id) when a schema registry is configured. Readers resolve old writer schemas into their
own, so producers and consumers can be upgraded independently; :func:`check_compatible` tells
ahead of time whether a schema change keeps that promise. Every failure is a :class:`SerdeError`
with a machine-readable ``reason``.

>>> from datetime import datetime, timezone
>>> from streamscore.serde import Serde, SerdeError
>>> serde = Serde("transaction")
>>> data = serde.encode({
...     "event_id": "e-1", "user_id": "u-1", "merchant_id": "m-1", "amount": 12.5,
...     "currency": "EUR", "country": "DE", "channel": "ECOM",
...     "event_time": datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc),
... })
>>> data[:2].hex(), data[2:10] == serde.fingerprint
('c301', True)
>>> record = serde.decode(data)
>>> record["amount"], record["is_fraud"], record["event_time"].isoformat()
(12.5, None, '2024-05-01T12:00:00+00:00')
>>> try:
...     serde.decode(data[:5])
... except SerdeError as exc:
...     exc.reason
'truncated'
"""

from streamscore.serde.compat import check_compatible
from streamscore.serde.errors import REASONS, Reason, SerdeError
from streamscore.serde.framing import Serde
from streamscore.serde.schemas import SCHEMA_NAMES, SchemaStore, load_schema

__all__ = [
    "REASONS",
    "SCHEMA_NAMES",
    "Reason",
    "SchemaStore",
    "Serde",
    "SerdeError",
    "check_compatible",
    "load_schema",
]
