"""Decode a batch of framed Avro messages into Arrow columns, not one dict per message.

fastavro builds a Python dict per record, and the feature processor then pulls every field out of those
dicts again to build its numpy columns: together about half of its time per event. For the common case,
messages written with the reader's own schema, a numba loop reads the bodies straight into columns instead.

Per-record decoding stays the single definition of what a message means. The loop only takes the messages
it can read exactly (a header naming the reader's own schema, every value well formed, nothing left over)
and hands every other one to :meth:`Serde.decode`: older or newer writer schemas (resolved into the
reader's), Confluent ids not yet seen, and anything malformed, which then fails with the same reason and
detail it always did (a ``timestamp-millis`` outside the years fastavro can represent, for one, is left to it).
So the batch path can only ever be faster, never disagree, with one exception: an ``int`` field holding more
than 32 bits, which fastavro reads as any integer, is ``corrupt`` here (a 32-bit column cannot hold it), for
that message alone.

Only flat records are supported: fields of null, boolean, int, long, float, double, string, enum,
``timestamp-millis`` and two-branch unions of null with one of those; :class:`ColumnarDecoder` refuses
any other schema when it is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa
from numba import njit

from streamscore.serde.errors import SerdeError
from streamscore.serde.framing import Serde
from streamscore.serde.schemas import ParsedSchema

__all__ = ["ColumnarDecoder", "Decoded"]

# Field kinds the loop reads.
_NULL, _BOOLEAN, _INT, _LONG, _FLOAT, _DOUBLE, _STRING, _ENUM = range(8)
_KINDS: Final = {"null": _NULL, "boolean": _BOOLEAN, "int": _INT, "long": _LONG, "float": _FLOAT,
                 "double": _DOUBLE, "string": _STRING}  # fmt: skip
_ARROW: Final = {_NULL: pa.null(), _BOOLEAN: pa.bool_(), _INT: pa.int32(), _LONG: pa.int64(),
                 _FLOAT: pa.float64(), _DOUBLE: pa.float64(), _STRING: pa.string(), _ENUM: pa.string()}  # fmt: skip
_TIMESTAMP_MS: Final = pa.timestamp("ms", tz="UTC")
_MAX_BUFFER: Final = 2**31 - 1  # Arrow string offsets are 32-bit
# What fastavro can turn into a datetime (years 1 to 9999); it refuses a timestamp-millis outside as corrupt.
_TIMESTAMP_MS_RANGE: Final = (-62_135_596_800_000, 253_402_300_799_999)


@dataclass(frozen=True)
class _Field:
    name: str
    kind: int
    null_branch: int  # which union branch is null: 0 or 1; -1 when the field is not nullable
    symbols: tuple[str, ...] = ()
    timestamp_ms: bool = False

    @property
    def value_range(self) -> tuple[int, int]:
        """The integers this field holds; the loop leaves any other to per-record decoding."""
        if self.timestamp_ms:
            return _TIMESTAMP_MS_RANGE
        return (-(2**31), 2**31 - 1) if self.kind == _INT else (-(2**63), 2**63 - 1)

    @property
    def arrow(self) -> pa.Field:
        kind = _TIMESTAMP_MS if self.timestamp_ms else _ARROW[self.kind]
        return pa.field(self.name, kind, nullable=self.null_branch >= 0 or self.kind == _NULL)


def _field(spec: dict[str, Any]) -> _Field:
    name, kind = spec["name"], spec["type"]
    null_branch = -1
    if isinstance(kind, list):
        branches = [b if isinstance(b, str) else b.get("type") for b in kind]
        if len(kind) != 2 or "null" not in branches or branches == ["null", "null"]:
            raise SerdeError("bad-schema", f"columnar decode: field {name!r} is a union other than [null, T]")
        null_branch = branches.index("null")
        kind = kind[1 - null_branch]
    logical = None
    if isinstance(kind, dict):
        logical = kind.get("logicalType")
        if kind.get("type") == "enum":
            return _Field(name, _ENUM, null_branch, tuple(kind["symbols"]))
        kind = kind.get("type")
    if kind not in _KINDS or logical not in (None, "timestamp-millis") or (logical and kind != "long"):
        shown = f"{kind} ({logical})" if logical else kind
        raise SerdeError("bad-schema", f"columnar decode: field {name!r} has a type it does not read: {shown}")
    return _Field(name, _KINDS[kind], null_branch, timestamp_ms=logical == "timestamp-millis")


def _fields(schema: ParsedSchema) -> list[_Field]:
    return [_field(spec) for spec in schema["fields"]]


@dataclass
class Decoded:
    """What a batch decoded to: ``table`` row ``i`` is message ``positions[i]``; ``errors`` are the
    messages that did not decode, by position, in order."""

    table: pa.Table
    positions: np.ndarray  # int64, ascending
    errors: list[tuple[int, SerdeError]]


class ColumnarDecoder:
    """Batch decoding for one :class:`Serde`'s (flat record) schema; safe to share between threads."""

    def __init__(self, serde: Serde) -> None:
        self.serde = serde
        fields = _fields(serde.schema)
        self.schema = pa.schema([f.arrow for f in fields])
        self._fields = fields
        self._kinds = np.array([f.kind for f in fields], np.int64)
        self._null_branch = np.array([f.null_branch for f in fields], np.int64)
        self._n_symbols = np.array([len(f.symbols) for f in fields], np.int64)
        self._lowest = np.array([f.value_range[0] for f in fields], np.int64)
        self._highest = np.array([f.value_range[1] for f in fields], np.int64)
        self._symbols = {i: pa.array(f.symbols, pa.string()) for i, f in enumerate(fields) if f.kind == _ENUM}

    def decode(self, values: Sequence[bytes | None]) -> Decoded:
        """Decode ``values`` (Kafka message values; None is a tombstone). A ``SerdeError("registry")``, an
        outage rather than a bad message, is raised; every other failure is returned in ``errors``."""
        n = len(values)
        fast = np.zeros(n, np.bool_)
        columns: dict[str, pa.Array] = {}
        if n:
            blobs = [v if type(v) is bytes else b"" for v in values]
            buf = np.frombuffer(b"".join(blobs), np.uint8)
            if len(buf) <= _MAX_BUFFER:
                sizes = np.fromiter(map(len, blobs), np.int64, n)
                ends = np.cumsum(sizes)
                starts = ends - sizes
                headers = self.serde.own_headers()
                header_bytes = np.frombuffer(b"".join(headers), np.uint8)
                header_ends = np.cumsum(np.array([len(h) for h in headers], np.int64))
                ints = np.empty((len(self._fields), n), np.int64)
                lens = np.zeros((len(self._fields), n), np.int64)
                reals = np.empty((len(self._fields), n), np.float64)
                nulls = np.zeros((len(self._fields), n), np.bool_)
                _decode_bodies(buf, starts, ends, header_bytes, header_ends, self._kinds, self._null_branch,
                               self._n_symbols, self._lowest, self._highest,
                               ints, lens, reals, nulls, fast)  # fmt: skip
                made = self._columns(buf, fast, ints, lens, reals, nulls) if fast.any() else None
                if made is None:  # nothing read, or a string was not UTF-8: let each message say for itself
                    fast[:] = False
                else:
                    columns = made
        slow = np.flatnonzero(~fast)
        errors: list[tuple[int, SerdeError]] = []
        records: list[dict[str, Any]] = []
        decoded_at: list[int] = []
        for i in slow.tolist():
            try:
                records.append(self.serde.decode(values[i]))
            except SerdeError as exc:
                if exc.reason == "registry":
                    raise
                errors.append((i, exc))
                continue
            decoded_at.append(i)
        fast_positions = np.flatnonzero(fast)
        if not records:
            table = pa.table(columns, schema=self.schema) if columns else self.schema.empty_table()
            return Decoded(table, fast_positions, errors)
        slow_table = self._table(records, decoded_at, errors)
        if not columns:
            return Decoded(slow_table, np.array(decoded_at, np.int64), errors)
        positions = np.concatenate([fast_positions, np.array(decoded_at, np.int64)])
        order = np.argsort(positions, kind="stable")
        table = pa.concat_tables([pa.table(columns, schema=self.schema), slow_table]).take(pa.array(order))
        return Decoded(table, positions[order], errors)

    def _table(
        self, records: list[dict[str, Any]], positions: list[int], errors: list[tuple[int, SerdeError]]
    ) -> pa.Table:
        """The per-record results as a table. fastavro reads an ``int`` as any integer; one that does not fit
        32 bits is refused here, message by message, so one such message does not fail the batch."""
        try:
            return pa.Table.from_pylist(records, schema=self.schema)
        except (pa.ArrowException, OverflowError):
            pass
        kept: list[dict[str, Any]] = []
        for record, position in zip(list(records), list(positions), strict=True):
            try:
                pa.Table.from_pylist([record], schema=self.schema)
            except (pa.ArrowException, OverflowError) as exc:
                errors.append((position, SerdeError("corrupt", f"{self.serde.name}: {exc}")))
                positions.remove(position)
                continue
            kept.append(record)
        errors.sort(key=lambda e: e[0])
        return pa.Table.from_pylist(kept, schema=self.schema)

    def _columns(
        self,
        buf: np.ndarray,
        fast: np.ndarray,
        ints: np.ndarray,
        lens: np.ndarray,
        reals: np.ndarray,
        nulls: np.ndarray,
    ) -> dict[str, pa.Array] | None:
        rows = np.flatnonzero(fast)
        columns: dict[str, pa.Array] = {}
        for i, f in enumerate(self._fields):
            mask = nulls[i, rows] if f.null_branch >= 0 else None
            if f.kind == _STRING:
                text = _strings(buf, ints[i, rows], lens[i, rows], mask)
                try:
                    text.validate(full=True)
                except pa.ArrowInvalid:
                    return None
                columns[f.name] = text
            elif f.kind == _ENUM:
                columns[f.name] = self._symbols[i].take(pa.array(ints[i, rows], pa.int64(), mask=mask))
            elif f.kind in (_FLOAT, _DOUBLE):
                columns[f.name] = pa.array(reals[i, rows], pa.float64(), mask=mask)
            elif f.kind == _BOOLEAN:
                columns[f.name] = pa.array(ints[i, rows].astype(np.bool_), pa.bool_(), mask=mask)
            elif f.kind == _NULL:
                columns[f.name] = pa.nulls(len(rows))
            else:
                columns[f.name] = pa.array(ints[i, rows], f.arrow.type, mask=mask)
        return columns


def _strings(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, nulls: np.ndarray | None) -> pa.Array:
    offsets = np.zeros(len(starts) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = np.empty(int(offsets[-1]), np.uint8)
    _gather(buf, starts, lengths, data)
    validity = None
    if nulls is not None and nulls.any():
        validity = pa.py_buffer(np.packbits(~nulls, bitorder="little"))
    return pa.Array.from_buffers(pa.string(), len(starts), [validity, pa.py_buffer(offsets), pa.py_buffer(data)])


@njit(cache=True, nogil=True)
def _gather(buf, starts, lengths, out):  # type: ignore[no-untyped-def]
    at = 0
    for i in range(len(starts)):
        s, n = starts[i], lengths[i]
        out[at : at + n] = buf[s : s + n]
        at += n


@njit(cache=True, nogil=True, inline="always")
def _varint(buf, pos, end):  # type: ignore[no-untyped-def]
    """A zig-zag varint at ``pos``: (value, next position), next -1 when it runs off the end or past 64 bits."""
    raw = np.uint64(0)
    shift = np.uint64(0)
    while True:
        if pos >= end or shift > np.uint64(63):
            return np.int64(0), np.int64(-1)
        byte = buf[pos]
        pos += 1
        raw |= np.uint64(byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += np.uint64(7)
    return np.int64(raw >> np.uint64(1)) ^ -np.int64(raw & np.uint64(1)), np.int64(pos)


@njit(cache=True, nogil=True)
def _decode_bodies(  # type: ignore[no-untyped-def]
    buf,
    starts,
    ends,
    headers,
    header_ends,
    kinds,
    null_branch,
    n_symbols,
    lowest,
    highest,
    ints,
    lens,
    reals,
    nulls,
    ok,
):
    """Read each message whose header is one of ``headers`` and whose body reads exactly; ``ok`` marks them."""
    real8 = np.empty(1, np.float64)
    bytes8 = real8.view(np.uint8)
    real4 = np.empty(1, np.float32)
    bytes4 = real4.view(np.uint8)
    for m in range(len(starts)):
        start, end = starts[m], ends[m]
        pos = -1
        h0 = 0
        for h in range(len(header_ends)):
            size = header_ends[h] - h0
            if end - start >= size:
                same = True
                for k in range(size):
                    if buf[start + k] != headers[h0 + k]:
                        same = False
                        break
                if same:
                    pos = start + size
                    break
            h0 = header_ends[h]
        if pos < 0:
            continue
        for f in range(len(kinds)):
            if null_branch[f] >= 0:
                branch, pos = _varint(buf, pos, end)
                if pos < 0 or (branch != 0 and branch != 1):
                    pos = -1
                    break
                if branch == null_branch[f]:
                    nulls[f, m] = True
                    ints[f, m] = 0  # a valid index under the mask, for the enum's take
                    continue
            kind = kinds[f]
            if kind == _NULL:
                continue
            if kind == _BOOLEAN:
                if pos >= end or buf[pos] > 1:
                    pos = -1
                    break
                ints[f, m] = buf[pos]
                pos += 1
            elif kind in (_INT, _LONG):
                value, pos = _varint(buf, pos, end)
                if pos < 0 or value < lowest[f] or value > highest[f]:
                    pos = -1
                    break
                ints[f, m] = value
            elif kind == _FLOAT:
                if pos + 4 > end:
                    pos = -1
                    break
                bytes4[:] = buf[pos : pos + 4]
                reals[f, m] = real4[0]
                pos += 4
            elif kind == _DOUBLE:
                if pos + 8 > end:
                    pos = -1
                    break
                bytes8[:] = buf[pos : pos + 8]
                reals[f, m] = real8[0]
                pos += 8
            elif kind == _STRING:
                size, pos = _varint(buf, pos, end)
                if pos < 0 or size < 0 or pos + size > end:
                    pos = -1
                    break
                ints[f, m] = pos
                lens[f, m] = size
                pos += size
            else:  # _ENUM
                index, pos = _varint(buf, pos, end)
                if pos < 0 or index < 0 or index >= n_symbols[f]:
                    pos = -1
                    break
                ints[f, m] = index
        if pos == end:
            ok[m] = True
