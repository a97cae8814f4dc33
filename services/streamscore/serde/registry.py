"""The Confluent Schema Registry as a :class:`~streamscore.serde.framing.Serde` needs it.

The Confluent wire format names a writer schema by a registry id, so a reader must ask the registry what an id
means and a writer must register its schema to get one. Both are remote calls that fail in their own ways; here
they are cached (an id never changes meaning) and every failure becomes a
:class:`~streamscore.serde.errors.SerdeError`, so the framing code sees one error type whether the bytes or the
registry are at fault. confluent-kafka's registry client is an optional extra, imported on first use only.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

from streamscore.serde.errors import SerdeError
from streamscore.serde.schemas import LoadedSchema, parse

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

__all__ = ["SchemaRegistry", "client_for"]


@functools.cache
def client_for(url: str) -> SchemaRegistryClient:
    """One client per URL and process: it holds the id caches, and ``mock://`` clients hold their
    whole registry, which readers and writers must share."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client({"url": url})


class SchemaRegistry:
    """Registry access with the caching and error mapping a Serde needs."""

    def __init__(self, url: str) -> None:
        self._url = url
        try:
            self._client = client_for(url)
        except ImportError as exc:
            raise SerdeError(
                "registry",
                f"the schema registry client is not installed (confluent-kafka[schemaregistry]): {exc}",
            ) from exc
        except Exception as exc:
            raise SerdeError("registry", f"cannot create a registry client for {url}: {exc}") from exc
        self._by_id: dict[int, LoadedSchema] = {}

    def register(self, subject: str, loaded: LoadedSchema) -> int:
        from confluent_kafka.schema_registry import Schema

        try:
            return int(self._client.register_schema(subject, Schema(loaded.json_text, "AVRO")))
        except Exception as exc:
            raise SerdeError("registry", f"cannot register {subject!r} at {self._url}: {exc}") from exc

    def writer(self, schema_id: int) -> LoadedSchema:
        loaded = self._by_id.get(schema_id)
        if loaded is not None:
            return loaded
        from confluent_kafka.schema_registry import SchemaRegistryError

        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise SerdeError("unknown-schema", f"schema id {schema_id} is not in the registry") from exc
            raise SerdeError("registry", f"fetching schema id {schema_id}: {exc}") from exc
        except Exception as exc:
            raise SerdeError("registry", f"fetching schema id {schema_id}: {exc}") from exc
        if (schema.schema_type or "AVRO") != "AVRO" or schema.references:
            raise SerdeError("unknown-schema", f"schema id {schema_id} is not a self-contained Avro schema")
        try:
            document = json.loads(schema.schema_str or "")
        except ValueError as exc:
            raise SerdeError("bad-schema", f"schema id {schema_id} is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise SerdeError("bad-schema", f"schema id {schema_id} is not a record schema")
        loaded = self._by_id[schema_id] = parse(document)
        return loaded
