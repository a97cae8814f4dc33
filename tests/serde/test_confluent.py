"""Confluent wire format (``00`` + 4-byte big-endian schema id + body).

These are unit tests against confluent-kafka's in-process ``MockSchemaRegistryClient`` (what
``SchemaRegistryClient.new_client`` returns for a ``mock://`` URL), NOT a real Schema Registry:
they pin our framing and error mapping, not the registry's HTTP behaviour or its compatibility
rules. Each test uses its own ``mock://`` URL, so registries do not leak between tests.
"""

from __future__ import annotations

import json
import uuid

import pytest

from streamscore.serde import SchemaStore, Serde, SerdeError

from .samples import sample_record

registry = pytest.importorskip("confluent_kafka.schema_registry")
try:
    from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
        MockSchemaRegistryClient,
    )
except ImportError:  # pragma: no cover - depends on the installed confluent-kafka
    pytest.skip("this confluent-kafka has no MockSchemaRegistryClient", allow_module_level=True)


@pytest.fixture
def url() -> str:
    return f"mock://serde-test-{uuid.uuid4().hex}"


def _client(url: str):
    from streamscore.serde.registry import client_for as _client_for

    client = _client_for(url)
    assert isinstance(client, MockSchemaRegistryClient)
    return client


def test_confluent_framing_bytes(url):
    serde = Serde("transaction", registry_url=url, subject="transactions-value")
    data = serde.encode(sample_record("transaction"))
    client = _client(url)
    registered = client.get_latest_version("transactions-value")
    assert data[0] == 0
    assert int.from_bytes(data[1:5], "big") == registered.schema_id
    assert json.loads(registered.schema.schema_str)["name"] == "Transaction"
    # Registered as written: defaults and docs survive (the canonical form would drop them).
    assert '"default":null' in registered.schema.schema_str


def test_round_trip_and_single_registration(url):
    writer = Serde("transaction", registry_url=url, subject="transactions-value")
    first = writer.encode(sample_record("transaction"))
    second = writer.encode(sample_record("transaction"))
    assert first[:5] == second[:5]
    assert len(_client(url).get_versions("transactions-value")) == 1
    reader = Serde("transaction", registry_url=url, store=SchemaStore())
    assert reader.decode(first) == sample_record("transaction")


def test_default_subject_is_name_value(url):
    serde = Serde("prediction", registry_url=url)
    assert serde.subject == "prediction-value"
    serde.encode(sample_record("prediction"))
    assert _client(url).get_latest_version("prediction-value").schema_id >= 1


def test_old_writer_schema_is_resolved_from_the_registry(url):
    from streamscore.serde.schemas import DEFAULT_SCHEMAS_DIR

    old = json.loads((DEFAULT_SCHEMAS_DIR / "transaction.avsc").read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] != "is_fraud"]
    # Writer and reader stores are disjoint: the reader can only learn the schema via the registry.
    writer = Serde.from_schema(old, registry_url=url, subject="transactions-value", store=SchemaStore())
    reader = Serde("transaction", registry_url=url, store=SchemaStore())
    record = sample_record("transaction")
    del record["is_fraud"]
    assert reader.decode(writer.encode(record))["is_fraud"] is None


def test_unknown_schema_id(url):
    reader = Serde("transaction", registry_url=url)
    with pytest.raises(SerdeError) as info:
        reader.decode(b"\x00\x00\x00\x03\xe7" + b"\x02x")
    assert info.value.reason == "unknown-schema"
    assert "999" in info.value.detail


def test_truncated_confluent_header(url):
    reader = Serde("transaction", registry_url=url)
    with pytest.raises(SerdeError) as info:
        reader.decode(b"\x00\x00\x01")
    assert info.value.reason == "truncated"


def test_registry_reader_still_reads_single_object(url):
    single = Serde("transaction").encode(sample_record("transaction"))
    assert Serde("transaction", registry_url=url).decode(single) == sample_record("transaction")


def test_registry_errors_are_wrapped(url, monkeypatch):
    serde = Serde("transaction", registry_url=url)
    client = _client(url)

    def refuse(*args, **kwargs):
        raise registry.SchemaRegistryError(409, 409, "incompatible with an earlier schema")

    monkeypatch.setattr(client, "register_schema", refuse)
    with pytest.raises(SerdeError) as info:
        serde.encode(sample_record("transaction"))
    assert info.value.reason == "registry"
    assert "409" in info.value.detail or "incompatible with an earlier" in info.value.detail

    def unreachable(*args, **kwargs):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(client, "get_schema", unreachable)
    with pytest.raises(SerdeError) as info:
        serde.decode(b"\x00\x00\x00\x00\x07" + b"\x02x")
    assert info.value.reason == "registry"


def test_incompatible_registry_schema(url):
    other = Serde("prediction", registry_url=url)
    data = other.encode(sample_record("prediction"))
    with pytest.raises(SerdeError) as info:
        Serde("transaction", registry_url=url).decode(data)
    assert info.value.reason == "incompatible"
