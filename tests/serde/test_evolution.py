"""Schema evolution: old messages stay readable, and unsafe changes are refused up front."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from streamscore.serde import SchemaStore, Serde, SerdeError, check_compatible

from .samples import sample_record

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def current(name: str = "transaction") -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.avsc").read_text())


def without(schema: dict[str, Any], *fields: str) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    out["fields"] = [f for f in out["fields"] if f["name"] not in fields]
    return out


def with_field(schema: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    out["fields"].append(field)
    return out


def field_type(schema: dict[str, Any], name: str, new_type: Any) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    for f in out["fields"]:
        if f["name"] == name:
            f["type"] = new_type
    return out


def incompatible(reader: Any, writer: Any) -> str:
    with pytest.raises(SerdeError) as info:
        check_compatible(reader, writer)
    assert info.value.reason == "incompatible"
    return info.value.detail


# -- old writer, current reader ---------------------------------------------------------------------


def test_new_reader_reads_message_without_optional_field():
    store = SchemaStore()
    old = Serde.from_schema(without(current(), "is_fraud"), store=store)
    new = Serde("transaction", store=store)
    assert old.fingerprint != new.fingerprint
    record = sample_record("transaction")
    del record["is_fraud"]
    decoded = new.decode(old.encode(record))
    assert decoded["is_fraud"] is None  # filled from the reader's default
    assert decoded == record | {"is_fraud": None}


def test_reader_with_added_defaulted_field_reads_current_messages():
    # The mirror case (e.g. a v2 reader adds "mcc" with a default, v1 writers still run).
    store = SchemaStore()
    v2 = with_field(current(), {"name": "mcc", "type": "string", "default": "0000", "doc": "x"})
    reader = Serde.from_schema(v2, store=store)
    writer = Serde("transaction", store=store)
    assert reader.decode(writer.encode(sample_record("transaction")))["mcc"] == "0000"


def test_old_reader_skips_fields_it_does_not_know():
    store = SchemaStore()
    old_reader = Serde.from_schema(without(current(), "is_fraud", "channel"), store=store)
    writer = Serde("transaction", store=store)
    decoded = old_reader.decode(writer.encode(sample_record("transaction")))
    assert "channel" not in decoded
    assert "is_fraud" not in decoded


def test_int_writer_read_as_long_and_double():
    base = {"type": "record", "name": "Counter", "namespace": "t", "fields": [{"name": "n", "type": "int"}]}
    store = SchemaStore(preload=False)
    writer = Serde.from_schema(base, store=store)
    as_long = Serde.from_schema(field_type(base, "n", "long"), store=store)
    as_double = Serde.from_schema(field_type(base, "n", "double"), store=store)
    data = writer.encode({"n": 7})
    assert as_long.decode(data) == {"n": 7}
    assert as_double.decode(data) == {"n": 7.0}


def test_decoding_an_incompatible_writer_is_refused_before_reading():
    store = SchemaStore()
    # The old writer had no event_time default and the reader cannot invent one.
    writer = Serde.from_schema(without(current(), "event_time"), store=store)
    reader = Serde("transaction", store=store)
    record = sample_record("transaction")
    del record["event_time"]
    data = writer.encode(record)
    for _ in range(2):  # the refusal is cached, the error raised afresh
        with pytest.raises(SerdeError) as info:
            reader.decode(data)
        assert info.value.reason == "incompatible"
        assert "event_time" in info.value.detail


def test_writer_unknown_to_the_readers_store():
    writer = Serde.from_schema(without(current(), "is_fraud"), store=SchemaStore())
    reader = Serde("transaction", store=SchemaStore())
    record = sample_record("transaction")
    del record["is_fraud"]
    with pytest.raises(SerdeError) as info:
        reader.decode(writer.encode(record))
    assert info.value.reason == "unknown-schema"


def test_renamed_record_with_alias_reads_old_messages():
    store = SchemaStore()
    renamed = current() | {"name": "CardTransaction", "aliases": ["streamscore.Transaction"]}
    reader = Serde.from_schema(renamed, store=store)
    writer = Serde("transaction", store=store)
    assert reader.decode(writer.encode(sample_record("transaction"))) == sample_record("transaction")


# -- check_compatible ---------------------------------------------------------------------------------


def test_identical_schemas_are_compatible():
    check_compatible(current(), current())


@pytest.mark.parametrize("name", ["transaction", "score_request", "prediction", "drift_report", "dead_letter"])
def test_every_schema_is_compatible_with_itself(name):
    check_compatible(current(name), current(name))


def test_accepts_removed_field():
    check_compatible(without(current(), "country"), current())


def test_accepts_added_field_with_default():
    check_compatible(with_field(current(), {"name": "mcc", "type": ["null", "string"], "default": None}), current())


def test_accepts_int_to_long_promotion():
    writer = with_field(current(), {"name": "n", "type": "int"})
    check_compatible(field_type(writer, "n", "long"), writer)
    check_compatible(field_type(writer, "n", "double"), writer)


def test_accepts_string_bytes_both_ways():
    writer = with_field(current(), {"name": "n", "type": "string"})
    check_compatible(field_type(writer, "n", "bytes"), writer)
    check_compatible(writer, field_type(writer, "n", "bytes"))


def test_refuses_added_field_without_default():
    detail = incompatible(with_field(current(), {"name": "mcc", "type": "string"}), current())
    assert "Transaction.mcc" in detail
    assert "no default" in detail


def test_refuses_int_to_string():
    writer = with_field(current(), {"name": "n", "type": "int"})
    detail = incompatible(field_type(writer, "n", "string"), writer)
    assert "Transaction.n" in detail


def test_refuses_narrowing():
    writer = with_field(current(), {"name": "n", "type": "long"})
    incompatible(field_type(writer, "n", "int"), writer)


def test_refuses_removed_enum_symbol():
    reader = field_type(current(), "channel", {"type": "enum", "name": "Channel", "symbols": ["POS", "ECOM", "ATM"]})
    detail = incompatible(reader, current())
    assert "MOTO" in detail


def test_accepts_removed_enum_symbol_when_reader_enum_has_default():
    reader = field_type(
        current(),
        "channel",
        {"type": "enum", "name": "Channel", "symbols": ["POS", "ECOM", "ATM", "OTHER"], "default": "OTHER"},
    )
    check_compatible(reader, current())


def test_accepts_added_enum_symbol():
    reader = field_type(
        current(),
        "channel",
        {"type": "enum", "name": "Channel", "symbols": ["POS", "ECOM", "ATM", "MOTO", "P2P"]},
    )
    check_compatible(reader, current())


def test_refuses_renamed_record_without_alias():
    detail = incompatible(current() | {"name": "CardTransaction"}, current())
    assert "alias" in detail


def test_accepts_renamed_record_with_alias():
    check_compatible(current() | {"name": "CardTransaction", "aliases": ["Transaction"]}, current())


def test_refuses_renamed_enum_without_alias():
    reader = field_type(
        current(), "channel", {"type": "enum", "name": "Medium", "symbols": ["POS", "ECOM", "ATM", "MOTO"]}
    )
    incompatible(reader, current())


def test_renamed_field_via_field_alias():
    writer = current()
    reader = copy.deepcopy(writer)
    for f in reader["fields"]:
        if f["name"] == "amount":
            f["name"], f["aliases"] = "amount_major", ["amount"]
    check_compatible(reader, writer)


def test_union_rules():
    # Writer union: every branch must be readable.
    check_compatible(["null", "long", "string"], ["null", "int"])
    incompatible(["null", "long"], ["null", "int", "string"])
    # Writer plain, reader union: some branch must match (here by promotion).
    check_compatible(["null", "double"], "float")
    incompatible(["null", "string"], "int")
    # Writer union, reader plain: fine while every branch fits.
    check_compatible("long", ["int", "long"])
    incompatible("long", ["null", "long"])
    # Optional field becoming required is refused; the reverse is fine.
    writer = current()
    required = field_type(writer, "is_fraud", "boolean")
    next(f for f in required["fields"] if f["name"] == "is_fraud").pop("default")
    incompatible(required, writer)
    check_compatible(writer, required)


def test_invalid_reader_default_is_bad_schema():
    # A default must match the type; fastavro's parser refuses it before any compatibility check.
    with pytest.raises(SerdeError) as info:
        check_compatible(field_type(current(), "is_fraud", "boolean"), current())
    assert info.value.reason == "bad-schema"


def test_nested_types_are_checked_recursively():
    writer = current("prediction")
    reader = copy.deepcopy(writer)
    latency = next(f for f in reader["fields"] if f["name"] == "latency")["type"]
    latency["fields"].append({"name": "queue_depth", "type": "int"})
    detail = incompatible(reader, writer)
    assert "Prediction.latency.queue_depth" in detail

    drift = current("drift_report")
    reader = copy.deepcopy(drift)
    items = next(f for f in reader["fields"] if f["name"] == "features")["type"]["items"]
    next(f for f in items["fields"] if f["name"] == "value")["type"] = "float"
    detail = incompatible(reader, drift)
    assert "DriftReport.features[].value" in detail


def test_arrays_maps_and_fixed():
    check_compatible({"type": "array", "items": "long"}, {"type": "array", "items": "int"})
    incompatible({"type": "array", "items": "int"}, {"type": "array", "items": "long"})
    check_compatible({"type": "map", "values": "double"}, {"type": "map", "values": "float"})
    incompatible({"type": "map", "values": "string"}, {"type": "array", "items": "string"})
    check_compatible({"type": "fixed", "name": "F", "size": 4}, {"type": "fixed", "name": "F", "size": 4})
    incompatible({"type": "fixed", "name": "F", "size": 8}, {"type": "fixed", "name": "F", "size": 4})


def test_logical_types_follow_their_underlying_type():
    millis = {"type": "long", "logicalType": "timestamp-millis"}
    check_compatible(millis, "long")
    check_compatible("long", millis)
    check_compatible({"type": "long", "logicalType": "timestamp-millis"}, {"type": "int", "logicalType": "date"})
    incompatible({"type": "int", "logicalType": "date"}, millis)


def test_named_type_references_are_followed():
    writer = current()
    reader = with_field(current(), {"name": "previous_channel", "type": "Channel", "default": "POS"})
    check_compatible(reader, writer)
    writer2 = with_field(current(), {"name": "previous_channel", "type": "Channel"})
    check_compatible(reader, writer2)


def test_recursive_types_terminate():
    node = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "value", "type": "int"},
            {"name": "next", "type": ["null", "Node"], "default": None},
        ],
    }
    longer = copy.deepcopy(node)
    longer["fields"][0]["type"] = "long"
    check_compatible(longer, node)
    incompatible(node, longer)


def test_invalid_schema_is_bad_schema():
    with pytest.raises(SerdeError) as info:
        check_compatible({"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}, "int")
    assert info.value.reason == "bad-schema"


def test_all_problems_are_reported():
    reader = with_field(with_field(current(), {"name": "a", "type": "int"}), {"name": "b", "type": "int"})
    detail = incompatible(reader, current())
    assert "Transaction.a" in detail
    assert "Transaction.b" in detail
