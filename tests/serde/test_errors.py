"""Every way a message or record can be wrong surfaces as one SerdeError with the right reason."""

from __future__ import annotations

import io
import pickle
from datetime import UTC, datetime

import pytest
from fastavro import schemaless_writer
from fastavro.validation import validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamscore.serde import REASONS, SCHEMA_NAMES, SchemaStore, Serde, SerdeError, load_schema

from .samples import sample_record


@pytest.fixture(scope="module")
def serde() -> Serde:
    return Serde("transaction")


@pytest.fixture(scope="module")
def good(serde) -> bytes:
    return serde.encode(sample_record("transaction"))


def _reason(serde: Serde, data) -> str:
    with pytest.raises(SerdeError) as info:
        serde.decode(data)
    assert info.value.reason in REASONS
    return info.value.reason


def test_error_shape():
    exc = SerdeError("corrupt", "3 trailing bytes")
    assert isinstance(exc, ValueError)
    assert (exc.reason, exc.detail) == ("corrupt", "3 trailing bytes")
    assert str(exc) == "corrupt: 3 trailing bytes"
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.reason, copy.detail) == (exc.reason, exc.detail)


def test_reason_set():
    assert {
        "truncated",
        "bad-magic",
        "unknown-schema",
        "bad-type",
        "corrupt",
        "incompatible",
    } <= REASONS


def test_empty(serde):
    assert _reason(serde, b"") == "truncated"


def test_tombstone_is_empty(serde):
    assert _reason(serde, None) == "truncated"


def test_not_bytes(serde):
    assert _reason(serde, "c301") == "corrupt"


@pytest.mark.parametrize("cut", [1, 2, 5, 9])
def test_truncated_header(serde, good, cut):
    assert _reason(serde, good[:cut]) == "truncated"


@pytest.mark.parametrize("cut", [10, 11, 20, -1])
def test_truncated_body(serde, good, cut):
    # A cut body is indistinguishable from a misread one, hence "corrupt", not "truncated".
    with pytest.raises(SerdeError) as info:
        serde.decode(good[:cut])
    assert info.value.reason == "corrupt"
    assert "ended early" in info.value.detail


@pytest.mark.parametrize("data", [b"{", b"\x01\x02", b"\xc3\x00" + bytes(20), b"\xc3\x02" + bytes(20), b"\xc3\x00"])
def test_wrong_magic(serde, data):
    assert _reason(serde, data) == "bad-magic"


def test_unknown_fingerprint(serde, good):
    data = good[:2] + bytes(8) + good[10:]
    with pytest.raises(SerdeError) as info:
        serde.decode(data)
    assert info.value.reason == "unknown-schema"
    assert "0000000000000000" in info.value.detail


def test_confluent_framing_without_registry(serde):
    with pytest.raises(SerdeError) as info:
        serde.decode(b"\x00\x00\x00\x00\x01" + b"\x02x")
    assert info.value.reason == "unknown-schema"
    assert "no schema registry" in info.value.detail


def test_trailing_garbage(serde, good):
    assert _reason(serde, good + b"\x00") == "corrupt"


def test_body_of_another_schema(serde):
    # A prediction body behind the transaction fingerprint: the decoder misreads it as a
    # transaction and either meets an impossible value or does not end where the buffer does.
    body = io.BytesIO()
    schemaless_writer(body, load_schema("prediction"), sample_record("prediction"))
    data = b"\xc3\x01" + serde.fingerprint + body.getvalue()
    assert _reason(serde, data) == "corrupt"


def test_invalid_enum_index(serde, good):
    # The channel enum index is the byte after the country string; 4 symbols, so index 9 is
    # impossible. zig-zag(9) == 18.
    record = sample_record("transaction")
    prefix = serde.encode(record | {"channel": "POS"})
    pos = len(prefix) - 1 - 6 - 1 - 1  # is_fraud(2 bytes), event_time(6 bytes) precede the end
    assert prefix[pos] == 0  # POS -> index 0
    corrupted = prefix[:pos] + bytes([18]) + prefix[pos + 1 :]
    assert _reason(serde, corrupted) == "corrupt"


def test_invalid_utf8(serde):
    body = b"\x02\xff" + b"\x02u\x02m" + bytes(8) + b"\x02E\x02D\x00\x00\x00"
    assert _reason(serde, b"\xc3\x01" + serde.fingerprint + body) == "corrupt"


# -- encode ---------------------------------------------------------------------------------------

WRONG_VALUES = [
    "1.5",
    "abc",
    1.5,
    7,
    2**40,
    2**70,
    True,
    None,
    b"x",
    [],
    ["a"],
    {},
    {"a": "b"},
    datetime(2024, 1, 1, tzinfo=UTC),
]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", "12.5"),  # fastavro's writer alone would coerce this to 12.5
        ("amount", True),
        ("amount", None),
        ("event_time", 1.5),
        ("event_time", "2024-05-01"),
        ("channel", "CARRIER_PIGEON"),
        ("is_fraud", "yes"),
        ("user_id", 42),
    ],
)
def test_encode_wrong_type(serde, field, value):
    with pytest.raises(SerdeError) as info:
        serde.encode(sample_record("transaction") | {field: value})
    assert info.value.reason == "bad-type"
    assert field in info.value.detail


def test_encode_missing_required_field(serde):
    record = sample_record("transaction")
    del record["amount"]
    with pytest.raises(SerdeError) as info:
        serde.encode(record)
    assert info.value.reason == "bad-type"


def test_encode_not_a_mapping(serde):
    with pytest.raises(SerdeError) as info:
        serde.encode(["not", "a", "record"])  # type: ignore[arg-type]
    assert info.value.reason == "bad-type"


def _leaf_paths(record, prefix=()):
    """(path, value) of every leaf, descending into nested records and arrays of records."""
    for key, value in record.items():
        path = (*prefix, key)
        yield path, value
        if isinstance(value, dict) and key != "context":
            yield from _leaf_paths(value, path)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            yield from _leaf_paths(value[0], (*path, 0))


def _replace(record, path, value):
    if len(path) == 1:
        return record | {path[0]: value}
    head, *rest = path
    if isinstance(record, list):
        copy = list(record)
        copy[head] = _replace(record[head], tuple(rest), value)
        return copy
    return record | {head: _replace(record[head], tuple(rest), value)}


def _encode_reason(serde: Serde, record) -> str | None:
    try:
        serde.encode(record)
    except SerdeError as exc:
        return exc.reason
    return None


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_encode_agrees_with_fastavro_validation(name):
    """Encoding (writer + cheap guard) accepts exactly what fastavro's strict validator accepts."""
    serde = Serde(name)
    schema = load_schema(name)
    base = sample_record(name)
    checked = 0
    for path, _ in list(_leaf_paths(base)):
        for wrong in WRONG_VALUES:
            record = _replace(base, path, wrong)
            valid = validate(record, schema, raise_errors=False)
            reason = _encode_reason(serde, record)
            assert reason in (None, "bad-type"), (path, wrong)
            assert (reason is None) == valid, (path, wrong)
            checked += 1
    assert checked > 50


# -- fuzzing ----------------------------------------------------------------------------------------

_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _decode_or_serde_error(serde: Serde, data: bytes) -> None:
    """Decoding may succeed or raise SerdeError; any other exception fails the test."""
    reason = None
    try:
        serde.decode(data)
    except SerdeError as exc:
        reason = exc.reason
    assert reason is None or reason in REASONS


_READERS = {name: Serde(name, store=SchemaStore()) for name in SCHEMA_NAMES}


@_FUZZ
@given(data=st.binary(max_size=64))
def test_fuzz_random_bytes(data):
    _decode_or_serde_error(_READERS["transaction"], data)


@_FUZZ
@given(name=st.sampled_from(SCHEMA_NAMES), body=st.binary(max_size=200))
def test_fuzz_bodies_behind_a_valid_header(name, body):
    serde = _READERS[name]
    _decode_or_serde_error(serde, b"\xc3\x01" + serde.fingerprint + body)


@_FUZZ
@given(name=st.sampled_from(SCHEMA_NAMES), data=st.data())
def test_fuzz_mutated_valid_messages(name, data):
    serde = _READERS[name]
    message = bytearray(serde.encode(sample_record(name)))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(message) - 1))
        message[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(message)))
    _decode_or_serde_error(serde, bytes(message[:cut]))
