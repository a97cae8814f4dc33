"""The columnar decoder gives exactly what per-record decoding gives: the same records, the same failures."""

from __future__ import annotations

import copy
import io
import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pyarrow as pa
import pytest

from streamscore.serde import SchemaStore, Serde, SerdeError
from streamscore.serde.columnar import ColumnarDecoder, Decoded

from .samples import sample_record
from .test_evolution import current, with_field, without

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

EVERY_KIND = {
    "type": "record",
    "name": "EveryKind",
    "namespace": "test",
    "fields": [
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "s", "type": "string"},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
        {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "nb", "type": ["null", "boolean"], "default": None},
        {"name": "ni", "type": ["int", "null"]},
        {"name": "nl", "type": ["null", "long"], "default": None},
        {"name": "nd", "type": ["null", "double"], "default": None},
        {"name": "ns", "type": ["null", "string"], "default": None},
        {"name": "ne", "type": ["null", {"type": "enum", "name": "F", "symbols": ["X", "Y"]}], "default": None},
        {"name": "nt", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": None},
        {"name": "n", "type": "null"},
    ],
}


def _every_kind(rng: random.Random) -> dict[str, Any]:
    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.3 else value

    return {
        "b": rng.random() < 0.5,
        "i": rng.randint(-(2**31), 2**31 - 1),
        "l": rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randint(-(10**12), 10**12)]),
        "f": rng.choice([0.5, -1.25, float("inf")]),
        "d": rng.choice([rng.uniform(-1e9, 1e9), 0.0, -0.0, 1e300, float("-inf")]),
        "s": "".join(rng.choice("ab é🙂\n") for _ in range(rng.randint(0, 12))),
        "e": rng.choice("ABC"),
        "t": T0 + timedelta(milliseconds=rng.randint(-(10**9), 10**9)),
        "nb": maybe(rng.random() < 0.5),
        "ni": maybe(rng.randint(-5, 5)),
        "nl": maybe(rng.randint(-(2**40), 2**40)),
        "nd": maybe(rng.uniform(-1, 1)),
        "ns": maybe(rng.choice(["", "x", "ü" * 40])),
        "ne": maybe(rng.choice("XY")),
        "nt": maybe(T0 - timedelta(days=rng.randint(0, 9000))),
        "n": None,
    }


def _per_record(serde: Serde, values: list[bytes | None]) -> tuple[list[dict[str, Any]], list[tuple[int, str, str]]]:
    """Each message decoded alone; the one stricter rule of the batch decoder applied by hand: fastavro reads
    an ``int`` field as any integer, and a value beyond 32 bits is corrupt (its detail is Arrow's)."""
    ints = [f["name"] for f in serde.schema["fields"] if f["type"] in ("int", ["int", "null"])]
    records, errors = [], []
    for i, value in enumerate(values):
        try:
            record = serde.decode(value)
        except SerdeError as exc:
            errors.append((i, exc.reason, exc.detail))
            continue
        if any(record[k] is not None and not -(2**31) <= record[k] < 2**31 for k in ints):
            errors.append((i, "corrupt", "(beyond 32 bits)"))
        else:
            records.append(record)
    return records, errors


def _as_raw_millis(schema: Any) -> Any:
    """The schema with its timestamp-millis longs as plain longs, to write any integer there."""
    out = copy.deepcopy({k: v for k, v in schema.items() if not k.startswith("__")})
    for f in out["fields"]:
        kind = f["type"]
        if isinstance(kind, dict) and kind.get("logicalType") == "timestamp-millis":
            f["type"] = "long"
        elif isinstance(kind, list):
            f["type"] = [
                "long" if isinstance(b, dict) and b.get("logicalType") == "timestamp-millis" else b for b in kind
            ]
    return fastavro.parse_schema(out)


def _raw(record: dict[str, Any]) -> dict[str, Any]:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return {k: (v - epoch) // timedelta(milliseconds=1) if isinstance(v, datetime) else v for k, v in record.items()}


def _nan_free(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN is not equal to itself; a mutated double can well be one."""
    return [{k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in records]


def _assert_same(serde: Serde, values: list[bytes | None]) -> Decoded:
    decoded = ColumnarDecoder(serde).decode(values)
    records, errors = _per_record(serde, values)
    got = [(i, e.reason, "(beyond 32 bits)" if "too large" in e.detail else e.detail) for i, e in decoded.errors]
    assert got == errors
    assert _nan_free(decoded.table.to_pylist()) == _nan_free(records)
    assert decoded.positions.tolist() == sorted(set(range(len(values))) - {i for i, _, _ in errors})
    return decoded


def test_every_supported_kind_decodes_as_fastavro_decodes_it() -> None:
    serde = Serde.from_schema(EVERY_KIND, store=SchemaStore(preload=False))
    rng = random.Random(7)
    values: list[bytes | None] = [serde.encode(_every_kind(rng)) for _ in range(500)]
    decoded = _assert_same(serde, values)
    assert decoded.table.num_rows == 500
    assert decoded.table.schema.field("t").type == pa.timestamp("ms", tz="UTC")
    assert decoded.table.column("ns").null_count > 0  # the test covers nulls


def test_cut_flipped_and_padded_messages_fail_exactly_as_one_by_one() -> None:
    """Every way a byte can go wrong (cut short, a byte changed, bytes appended, a wrong header), mixed with
    good messages in one batch: the failures keep their per-record reason and detail, the rest decode."""
    serde = Serde.from_schema(EVERY_KIND, store=SchemaStore(preload=False))
    rng = random.Random(11)
    values: list[bytes | None] = []
    for _ in range(3000):
        data = bytearray(serde.encode(_every_kind(rng)))
        how = rng.randrange(5)
        if how == 0:
            data = data[: rng.randrange(len(data))]
        elif how == 1:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif how == 2:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
        elif how == 3:
            data[rng.randrange(10, len(data))] = rng.choice([0x80, 0xFF, 0x02, 0x06])  # varints, unions, enums
        values.append(bytes(data))
    values += [None, b"", b"\xc3", b"\xc3\x01" + b"\x00" * 8 + b"\x00"]
    decoded = _assert_same(serde, values)
    assert 500 < len(decoded.errors) < 2500  # both kinds are well represented


def test_a_string_that_is_not_utf8_fails_only_its_own_message() -> None:
    serde = Serde("transaction")
    good = serde.encode(sample_record("transaction"))
    bad = bytearray(good)
    at = bad.index(b"user-42")
    bad[at] = 0xFF
    decoded = _assert_same(serde, [good, bytes(bad), good])
    assert [i for i, _ in decoded.errors] == [1]


def test_older_and_newer_writers_are_resolved_in_place_between_fast_messages() -> None:
    store = SchemaStore()
    reader = Serde("transaction", store=store)
    older = Serde.from_schema(without(current(), "is_fraud"), store=store)
    newer = Serde.from_schema(with_field(current(), {"name": "mcc", "type": "string", "default": ""}), store=store)
    record = sample_record("transaction")
    values: list[bytes | None] = []
    for i in range(30):
        writer = (reader, older, newer)[i % 3]
        values.append(writer.encode({**record, "event_id": f"e-{i}", "mcc": "5411"}))
    decoded = _assert_same(reader, values)
    assert decoded.table.column("event_id").to_pylist() == [f"e-{i}" for i in range(30)]
    assert decoded.table.column("is_fraud").to_pylist()[:3] == [False, None, False]


def test_an_int_beyond_32_bits_is_refused_for_its_message_alone() -> None:
    """fastavro reads an ``int`` as any integer; a column of 32-bit ints cannot hold the bigger ones."""
    schema = {"type": "record", "name": "Small", "namespace": "test", "fields": [{"name": "i", "type": "int"}]}
    serde = Serde.from_schema(schema, store=SchemaStore(preload=False))
    too_big = serde.encode({"i": 1})[:-1] + bytes([0x80, 0x80, 0x80, 0x80, 0x10])  # zig-zag 2**31
    decoded = ColumnarDecoder(serde).decode([serde.encode({"i": 5}), too_big, serde.encode({"i": -7})])
    assert decoded.table.column("i").to_pylist() == [5, -7]
    assert [(i, e.reason) for i, e in decoded.errors] == [(1, "corrupt")]


@pytest.mark.parametrize("field", ["t", "nt"])
def test_timestamps_beyond_what_a_datetime_holds_fail_as_one_by_one(field: str) -> None:
    """fastavro refuses a timestamp-millis outside years 1-9999 as corrupt; the loop must not take it."""
    serde = Serde.from_schema(EVERY_KIND, store=SchemaStore(preload=False))
    plain = serde.schema
    record = _every_kind(random.Random(3))
    values: list[bytes | None] = []
    for ms in (-62_135_596_800_001, -62_135_596_800_000, 0, 253_402_300_799_999, 253_402_300_800_000, -(10**14)):
        body = io.BytesIO()
        fastavro.schemaless_writer(body, _as_raw_millis(plain), {**_raw(record), field: ms})
        values.append(serde.own_headers()[0] + body.getvalue())
    decoded = _assert_same(serde, values)
    assert [i for i, e in decoded.errors if e.reason == "corrupt"] == [0, 4, 5]


def test_confluent_framed_messages_take_the_fast_path_once_their_id_is_known() -> None:
    registry = f"mock://columnar-{uuid.uuid4().hex}"
    writer = Serde("transaction", registry_url=registry, subject="tx-value")
    values: list[bytes | None] = [
        writer.encode({**sample_record("transaction"), "event_id": f"e-{i}"}) for i in range(10)
    ]
    reader = Serde("transaction", registry_url=registry, subject="tx-value")
    assert len(reader.own_headers()) == 1  # single-object only
    _assert_same(reader, values)
    assert values[0] is not None
    assert values[0][:5] in reader.own_headers()  # learned from the first message, so later batches are fast


def test_schemas_it_cannot_read_as_columns_are_refused_when_it_is_built() -> None:
    with pytest.raises(SerdeError, match="'context'") as raised:
        ColumnarDecoder(Serde("score_request"))
    assert raised.value.reason == "bad-schema"


def test_an_empty_batch_is_an_empty_table_of_the_schema() -> None:
    decoded = ColumnarDecoder(Serde("transaction")).decode([])
    assert decoded.table.num_rows == 0
    assert decoded.table.schema.names[:3] == ["event_id", "user_id", "merchant_id"]
    assert decoded.errors == []
