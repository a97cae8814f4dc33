"""The single error type of the serde layer.

Consumers route failures (dead-letter, metrics, retries) on a short machine code rather than on
exception classes or message text, so every failure is a :class:`SerdeError` whose ``reason`` is
one of :data:`REASONS`.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from streamscore.errors import StreamscoreError

__all__ = ["REASONS", "Reason", "SerdeError"]

Reason = Literal[
    "truncated",  # the message is empty or ends inside the framing header
    "bad-magic",  # the first bytes name no framing we know (neither single-object nor Confluent)
    "unknown-schema",  # the fingerprint / registry id / schema name is not known to this reader
    "bad-type",  # encode: the record does not match the writer schema
    # The body does not decode: it ends early, holds an impossible value (enum/union index, UTF-8)
    # or has bytes left over. A cut body and a body written with another schema look the same to
    # a decoder, so both are "corrupt" rather than guessing at "truncated".
    "corrupt",
    "incompatible",  # the writer schema cannot be resolved into the reader schema
    "bad-schema",  # a schema document is malformed (invalid JSON or not valid Avro)
    "registry",  # the schema registry failed or refused a request (other than "id not found")
]

REASONS: Final[frozenset[str]] = frozenset(get_args(Reason))


class SerdeError(StreamscoreError, ValueError):
    """Raised for every encode/decode/schema failure, with a stable ``reason`` code.

    It is also a :class:`ValueError` because every failure is ultimately "this value/these bytes
    are not acceptable", which lets generic callers catch it without importing this module.
    """

    reason: Reason
    detail: str

    def __init__(self, reason: Reason, detail: str) -> None:
        # Passing both to the base keeps the exception picklable (args rebuild it).
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"

    def __repr__(self) -> str:
        return f"SerdeError({self.reason!r}, {self.detail!r})"
