"""Framed Avro messages: :class:`Serde` turns records into self-describing bytes and back.

A bare Avro body cannot be read without the exact schema that wrote it, so every message starts
with a header naming that schema. Two framings are understood, told apart by the first byte:

* ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint (Avro single-object encoding): needs
  no service; the reader finds the writer schema in a :class:`~streamscore.serde.schemas.SchemaStore`.
* ``00`` + 4-byte big-endian schema id (Confluent wire format): interoperates with Kafka tooling;
  the reader fetches the writer schema from the Schema Registry
  (:class:`~streamscore.serde.registry.SchemaRegistry`).

Both go through the same fastavro encoder/decoder and raise only
:class:`~streamscore.serde.errors.SerdeError`, so a consumer handles one error type whatever wrote
the message. Decoding resolves the writer schema into the reader's, which is what lets a new
reader consume old messages. Encoding first runs the schema's guard
(:func:`~streamscore.serde.guard.compile_guard`), because fastavro's writer coerces some wrong
types instead of refusing them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from io import BytesIO
from pathlib import Path
from typing import Any, Final

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError

from streamscore.serde.compat import check_compatible
from streamscore.serde.errors import SerdeError
from streamscore.serde.guard import compile_guard
from streamscore.serde.registry import SchemaRegistry
from streamscore.serde.schemas import (
    DEFAULT_SCHEMAS_DIR,
    LoadedSchema,
    ParsedSchema,
    SchemaStore,
    default_store,
    load_file,
    parse,
    schema_path,
)

__all__ = ["CONFLUENT_MAGIC", "SINGLE_OBJECT_MAGIC", "Serde"]

SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"
CONFLUENT_MAGIC: Final = b"\x00"
_SINGLE_OBJECT_HEADER: Final = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER: Final = len(CONFLUENT_MAGIC) + 4
_BYTES_LIKE: Final = (bytes, bytearray, memoryview)  # a tuple: ``bytes | ...`` builds a union on every call


class Serde:
    """Encoder/decoder for one record schema (the writer schema for ``encode``, the reader schema
    for ``decode``).

    Without ``registry_url`` it writes single-object framing; with one it writes Confluent framing,
    registering its schema under ``subject`` (default ``<name>-value``; pass ``<topic>-value`` for
    the TopicNameStrategy) on first use. It reads both framings either way, provided it can find
    the writer schema. ``store`` defaults to one store per schemas folder shared by the process.

    Decoded ``timestamp-millis`` fields are timezone-aware UTC :class:`datetime.datetime`; encode
    accepts those or int milliseconds. Keys of ``record`` that the schema does not have are
    ignored. Instances are safe to share between threads.
    """

    def __init__(
        self,
        name: str,
        store: SchemaStore | None = None,
        registry_url: str | None = None,
        subject: str | None = None,
        schemas_dir: str | Path | None = None,
    ) -> None:
        path = schema_path(name, schemas_dir)
        store = store if store is not None else default_store(path.parent)
        self._setup(name, load_file(path), store, registry_url, subject)

    @classmethod
    def from_schema(
        cls,
        schema: Mapping[str, Any],
        store: SchemaStore | None = None,
        registry_url: str | None = None,
        subject: str | None = None,
    ) -> Serde:
        """A Serde for an in-memory schema (e.g. an older or newer version in a test).

        The schema is added to ``store`` so that readers sharing the store can decode its output.
        """
        loaded = parse(schema)
        name = str(loaded.parsed.get("name", "")).rsplit(".", 1)[-1]
        serde = cls.__new__(cls)
        store = store if store is not None else default_store(DEFAULT_SCHEMAS_DIR.resolve())
        serde._setup(name, loaded, store, registry_url, subject)
        return serde

    def _setup(
        self,
        name: str,
        loaded: LoadedSchema,
        store: SchemaStore,
        registry_url: str | None,
        subject: str | None,
    ) -> None:
        if loaded.parsed.get("type") not in ("record", "error"):
            raise SerdeError("bad-schema", f"{name}: a Serde needs a record schema")
        self._name = name
        self._loaded = loaded
        self._schema = loaded.parsed
        self._store = store
        store.add_loaded(loaded)
        self._guard = compile_guard(loaded.parsed)
        self._single_object_header = SINGLE_OBJECT_MAGIC + loaded.fingerprint
        # Writer fingerprint -> writer schema to resolve from (None: same as ours, no resolution).
        self._writers: dict[bytes, ParsedSchema | None] = {loaded.fingerprint: None}
        self._refused: dict[bytes, str] = {}
        self._registry = SchemaRegistry(registry_url) if registry_url else None
        self._subject = subject or (f"{name}-value" if registry_url else None)
        self._confluent_header: bytes | None = None
        # Headers seen to frame a body in our own schema (what a batch decoder may read without resolution).
        self._own_headers: tuple[bytes, ...] = (self._single_object_header,)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def schema(self) -> ParsedSchema:
        """The parsed schema (shared; do not mutate)."""
        return self._schema

    @property
    def fingerprint(self) -> bytes:
        """The 8-byte CRC-64-AVRO fingerprint, as it appears in single-object framing."""
        return self._loaded.fingerprint

    @property
    def subject(self) -> str | None:
        return self._subject

    def __repr__(self) -> str:
        framing = f"confluent subject={self._subject!r}" if self._registry else "single-object"
        return f"Serde({self._name!r}, fingerprint={self.fingerprint.hex()}, {framing})"

    # -- encode -----------------------------------------------------------------------------------

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Frame and encode ``record``; ``SerdeError("bad-type")`` if it does not fit the schema."""
        if self._guard is not None:
            self._guard(record)
        header = self._single_object_header if self._registry is None else self._confluent_prefix()
        out = BytesIO()
        out.write(header)
        try:
            schemaless_writer(out, self._schema, record)
        except Exception as exc:
            raise SerdeError("bad-type", f"{self._name}: {exc}") from exc
        return out.getvalue()

    def _confluent_prefix(self) -> bytes:
        header = self._confluent_header
        if header is None:
            with self._lock:
                if self._confluent_header is None:
                    assert self._registry is not None
                    assert self._subject is not None
                    schema_id = self._registry.register(self._subject, self._loaded)
                    self._confluent_header = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")
                header = self._confluent_header
        return header

    def own_headers(self) -> tuple[bytes, ...]:
        """The framing headers known to precede a body written in this Serde's own schema: the single-object
        header, and each Confluent id the registry has resolved to it so far."""
        return self._own_headers

    # -- decode -----------------------------------------------------------------------------------

    def decode(self, data: bytes | bytearray | memoryview | None) -> dict[str, Any]:
        """Decode one framed message into a record of this Serde's schema.

        ``None`` (a Kafka tombstone) counts as an empty message. Raises only SerdeError.
        """
        if data is None:
            raise SerdeError("truncated", "empty message (None)")
        if not isinstance(data, _BYTES_LIKE):
            raise SerdeError("corrupt", f"expected bytes, got {type(data).__name__}")
        size = len(data)
        if size == 0:
            raise SerdeError("truncated", "empty message")
        first = data[0]
        if first == SINGLE_OBJECT_MAGIC[0]:
            if size >= 2 and data[1] != SINGLE_OBJECT_MAGIC[1]:
                raise SerdeError("bad-magic", f"single-object marker must be c301, got {bytes(data[:2]).hex()}")
            if size < _SINGLE_OBJECT_HEADER:
                raise SerdeError("truncated", f"{size} bytes, the single-object header alone is 10")
            writer = self._writer_by_fingerprint(bytes(data[2:_SINGLE_OBJECT_HEADER]))
            return self._read_body(data, _SINGLE_OBJECT_HEADER, writer)
        if first == CONFLUENT_MAGIC[0]:
            if self._registry is None:
                raise SerdeError("unknown-schema", "Confluent-framed message but no schema registry is configured")
            if size < _CONFLUENT_HEADER:
                raise SerdeError("truncated", f"{size} bytes, the Confluent header alone is 5")
            loaded = self._registry.writer(int.from_bytes(data[1:_CONFLUENT_HEADER], "big"))
            if loaded.fingerprint == self.fingerprint and bytes(data[:_CONFLUENT_HEADER]) not in self._own_headers:
                self._own_headers = (*self._own_headers, bytes(data[:_CONFLUENT_HEADER]))
            return self._read_body(data, _CONFLUENT_HEADER, self._writer_by_schema(loaded))
        raise SerdeError("bad-magic", f"unknown framing byte 0x{first:02x}")

    def _writer_by_fingerprint(self, fingerprint: bytes) -> ParsedSchema | None:
        try:
            return self._writers[fingerprint]
        except KeyError:
            pass
        writer = self._store.get(fingerprint)  # SerdeError("unknown-schema") when absent
        return self._admit(fingerprint, writer)

    def _writer_by_schema(self, loaded: LoadedSchema) -> ParsedSchema | None:
        try:
            return self._writers[loaded.fingerprint]
        except KeyError:
            return self._admit(loaded.fingerprint, loaded.parsed)

    def _admit(self, fingerprint: bytes, writer: ParsedSchema) -> ParsedSchema:
        """Check a writer schema once; fastavro alone would only fail on the messages that hit a
        problematic branch, and with a less helpful message."""
        refused = self._refused.get(fingerprint)
        if refused is None:
            try:
                check_compatible(self._schema, writer)
            except SerdeError as exc:
                refused = self._refused[fingerprint] = exc.detail
            else:
                self._writers[fingerprint] = writer
                return writer
        raise SerdeError("incompatible", f"writer schema {fingerprint.hex()} -> {self._name}: {refused}")

    def _read_body(
        self, data: bytes | bytearray | memoryview, offset: int, writer: ParsedSchema | None
    ) -> dict[str, Any]:
        stream = BytesIO(data)
        stream.seek(offset)
        try:
            if writer is None:
                record = schemaless_reader(stream, self._schema, None)
            else:
                record = schemaless_reader(stream, writer, self._schema)
        except SchemaResolutionError as exc:
            raise SerdeError("incompatible", f"{self._name}: {exc}") from exc
        except EOFError as exc:
            raise SerdeError(
                "corrupt", f"{self._name}: body ended early (cut short or written with another schema)"
            ) from exc
        except Exception as exc:
            raise SerdeError("corrupt", f"{self._name}: body does not decode: {exc!r}") from exc
        # fastavro stops where the record ends; bytes after it mean the framing or body is wrong.
        leftover = len(data) - stream.tell()
        if leftover:
            raise SerdeError("corrupt", f"{self._name}: {leftover} trailing bytes after the body")
        if not isinstance(record, dict):  # pragma: no cover - a record schema always yields a dict
            raise SerdeError("corrupt", f"{self._name}: body decoded to {type(record).__name__}")
        return record
