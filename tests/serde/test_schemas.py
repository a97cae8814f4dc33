from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamscore.serde import SCHEMA_NAMES, SchemaStore, Serde, SerdeError, load_schema
from streamscore.serde.schemas import DEFAULT_SCHEMAS_DIR, fingerprint_of

RECORD_NAMES = {
    "transaction": "Transaction",
    "score_request": "ScoreRequest",
    "prediction": "Prediction",
    "drift_report": "DriftReport",
    "dead_letter": "DeadLetter",
}


def _raw(name: str) -> dict:
    return json.loads((DEFAULT_SCHEMAS_DIR / f"{name}.avsc").read_text())


def _named_nodes(node):
    """Every record/enum definition inside a raw schema."""
    if isinstance(node, list):
        for branch in node:
            yield from _named_nodes(branch)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed"):
            yield node
        for key in ("type", "items", "values"):
            if isinstance(node.get(key), dict | list):
                yield from _named_nodes(node[key])
        for field in node.get("fields", ()):
            yield from _named_nodes(field["type"])


def test_default_folder_is_the_repository_schemas_folder():
    assert Path(__file__).resolve().parents[2] / "schemas" == DEFAULT_SCHEMAS_DIR
    assert sorted(p.stem for p in DEFAULT_SCHEMAS_DIR.glob("*.avsc")) == sorted(SCHEMA_NAMES)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_names_namespace_and_docs(name):
    raw = _raw(name)
    assert raw["namespace"] == "streamscore"
    assert raw["name"] == RECORD_NAMES[name]
    for node in _named_nodes(raw):
        assert node.get("doc"), f"{node['name']} has no doc"
        for field in node.get("fields", ()):
            assert field.get("doc"), f"{node['name']}.{field['name']} has no doc"


def test_channel_enum_is_the_same_everywhere():
    def channel(name):
        return next(f["type"] for f in _raw(name)["fields"] if f["name"] == "channel")

    assert channel("transaction") == channel("score_request")
    assert channel("transaction")["symbols"] == ["POS", "ECOM", "ATM", "MOTO"]


def test_load_schema_parses_once():
    assert load_schema("transaction") is load_schema("transaction")
    assert load_schema("transaction")["name"] == "streamscore.Transaction"


@pytest.mark.parametrize("name", ["nope", "../pyproject", "a/b", ""])
def test_unknown_or_invalid_names(name):
    with pytest.raises(SerdeError) as info:
        load_schema(name)
    assert info.value.reason == "unknown-schema"


def test_malformed_schema_file(tmp_path):
    (tmp_path / "broken.avsc").write_text('{"type": "record", "name": "B", "fields": [{"name": "a"}]}')
    (tmp_path / "notjson.avsc").write_text("{")
    for name in ("broken", "notjson"):
        with pytest.raises(SerdeError) as info:
            load_schema(name, schemas_dir=tmp_path)
        assert info.value.reason == "bad-schema"


def test_serde_needs_a_record_schema(tmp_path):
    (tmp_path / "plain.avsc").write_text('{"type": "string"}')
    with pytest.raises(SerdeError) as info:
        Serde("plain", schemas_dir=tmp_path)
    assert info.value.reason == "bad-schema"


def test_store_is_preloaded_with_every_schema():
    store = SchemaStore()
    for name in SCHEMA_NAMES:
        fingerprint = fingerprint_of(load_schema(name))
        assert fingerprint in store
        assert store.get(fingerprint) is load_schema(name)
    assert len(store) >= len(SCHEMA_NAMES)


def test_store_includes_subfolders(tmp_path):
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "old.v1.avsc").write_text(
        '{"type": "record", "name": "Old", "fields": [{"name": "a", "type": "int"}]}'
    )
    store = SchemaStore(tmp_path)
    assert len(store) == 1


def test_store_add_and_get():
    store = SchemaStore(preload=False)
    assert len(store) == 0
    schema = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}
    fingerprint = store.add(schema)
    assert len(fingerprint) == 8
    assert fingerprint == fingerprint_of(schema)
    assert store.add(schema) == fingerprint  # idempotent
    assert list(store) == [fingerprint]
    assert store.get(fingerprint)["name"] == "R"
    with pytest.raises(SerdeError) as info:
        store.get(bytes(8))
    assert info.value.reason == "unknown-schema"


def test_store_add_rejects_invalid_schema():
    with pytest.raises(SerdeError) as info:
        SchemaStore(preload=False).add({"type": "record", "name": "R", "fields": [{"name": "a", "type": "nope"}]})
    assert info.value.reason == "bad-schema"


def test_an_empty_store_is_used_not_replaced():
    store = SchemaStore(preload=False)
    serde = Serde.from_schema({"type": "record", "name": "Solo", "fields": [{"name": "a", "type": "int"}]}, store=store)
    assert list(store) == [serde.fingerprint]
