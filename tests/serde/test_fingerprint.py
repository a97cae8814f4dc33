"""Single-object framing header checked against an independent CRC-64-AVRO implementation.

The reference below follows the Avro specification ("Schema Fingerprints") line by line and
shares no code with fastavro, so a byte-order or table mistake in either would show.
"""

from __future__ import annotations

import pytest
from fastavro.schema import to_parsing_canonical_form

from streamscore.serde import SCHEMA_NAMES, Serde, load_schema
from streamscore.serde.schemas import fingerprint_of

from .samples import sample_record

_EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _table()


def reference_crc64_avro(data: bytes) -> int:
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


# Signed Java longs from apache/avro share/test/data/schema-tests.txt.
SPEC_VECTORS = [
    ('"null"', 7195948357588979594),
    ('"boolean"', -6970731678124411036),
    ('"int"', 8247732601305521295),
    ('"long"', -3434872931120570953),
    ('"float"', 5583340709985441680),
    ('"double"', -8181574048448539266),
    ('"bytes"', 5746618253357095269),
    ('"string"', -8142146995180207161),
    ('{"name":"foo","type":"record","fields":[]}', -4824392279771201922),
]


@pytest.mark.parametrize(("canonical", "expected"), SPEC_VECTORS)
def test_reference_implementation_matches_spec_vectors(canonical, expected):
    assert _signed(reference_crc64_avro(canonical.encode())) == expected


@pytest.mark.parametrize(("canonical", "expected"), SPEC_VECTORS)
def test_fingerprint_is_the_crc_written_little_endian(canonical, expected):
    import json

    schema = json.loads(canonical)
    assert fingerprint_of(schema) == (expected & (2**64 - 1)).to_bytes(8, "little")


def test_int_vector_bytes():
    # 0x7275d51a3f395c8f written little-endian.
    assert fingerprint_of("int") == bytes.fromhex("8f5c393f1ad57572")


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_single_object_header(name):
    serde = Serde(name)
    data = serde.encode(sample_record(name))
    canonical = to_parsing_canonical_form(load_schema(name)).encode()
    expected = reference_crc64_avro(canonical).to_bytes(8, "little")
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == expected == serde.fingerprint


def test_fingerprint_ignores_docs_and_defaults():
    # The canonical form strips doc/default, so documentation edits do not change the wire id.
    base = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}
    documented = {
        "type": "record",
        "name": "R",
        "doc": "x",
        "fields": [{"name": "a", "type": "int", "doc": "y", "default": 1}],
    }
    assert fingerprint_of(base) == fingerprint_of(documented)
