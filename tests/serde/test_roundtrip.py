from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from streamscore.serde import SCHEMA_NAMES, SchemaStore, Serde

from .samples import sample_record


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_round_trip(name):
    serde = Serde(name)
    record = sample_record(name)
    assert serde.decode(serde.encode(record)) == record


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_round_trip_through_a_separate_reader(name):
    # A reader with its own store (as in another process) needs nothing from the writer.
    writer = Serde(name)
    reader = Serde(name, store=SchemaStore())
    assert reader.decode(writer.encode(sample_record(name))) == sample_record(name)


def test_optional_fields_take_their_defaults():
    serde = Serde("transaction")
    record = sample_record("transaction")
    del record["is_fraud"]
    assert serde.decode(serde.encode(record))["is_fraud"] is None


def test_extra_keys_are_ignored():
    serde = Serde("transaction")
    record = sample_record("transaction") | {"not_in_schema": 1}
    assert "not_in_schema" not in serde.decode(serde.encode(record))


def test_timestamp_millis_accepts_datetime_and_int_millis():
    """Encode takes a tz-aware datetime or int epoch millis; decode always returns a tz-aware
    UTC datetime (fastavro's behaviour for timestamp-millis), truncated to milliseconds."""
    serde = Serde("transaction")
    when = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    millis = 1714566615123
    from_dt = serde.decode(serde.encode(sample_record("transaction") | {"event_time": when}))
    from_int = serde.decode(serde.encode(sample_record("transaction") | {"event_time": millis}))
    expected = datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC)
    assert from_dt["event_time"] == from_int["event_time"] == expected
    assert from_dt["event_time"].tzinfo is not None
    assert from_dt["event_time"].utcoffset() == timedelta(0)
    # Other offsets are converted, not mislabelled.
    cest = when.astimezone(timezone(timedelta(hours=2)))
    from_cest = serde.decode(serde.encode(sample_record("transaction") | {"event_time": cest}))
    assert from_cest["event_time"] == expected


def test_from_schema_and_named_serde_agree():
    from streamscore.serde import load_schema

    assert Serde.from_schema(load_schema("transaction")).fingerprint == Serde("transaction").fingerprint


def test_schemas_dir_override(tmp_path):
    (tmp_path / "thing.avsc").write_text(
        '{"type": "record", "name": "Thing", "namespace": "t", "fields": [{"name": "n", "type": "long", "doc": "x"}]}'
    )
    serde = Serde("thing", schemas_dir=tmp_path)
    assert serde.decode(serde.encode({"n": 5})) == {"n": 5}
    assert serde.name == "thing"
    assert "single-object" in repr(serde)


def test_decode_accepts_bytearray_and_memoryview():
    serde = Serde("transaction")
    data = serde.encode(sample_record("transaction"))
    assert serde.decode(bytearray(data)) == serde.decode(memoryview(data)) == sample_record("transaction")
