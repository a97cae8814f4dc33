"""Feast's Redis values read back column-wise: the read side of :mod:`~streamscore.store.encoding`.

Decoding sits on the scorer's request path, so the cells of a whole batch are laid end to end in one buffer
(:class:`Cells`) and decoded with numpy array work, not one protobuf parse per value. The fast path takes exactly
the encodings that the writer and Feast produce, with the tag bytes the encoder writes (both take them from
:mod:`~streamscore.store.layout`, so the two sides cannot drift apart); any other bytes go to the protobuf library
and are converted as Feast converts them, so a legal but unusual encoding is never misread.

>>> values, missing = decode_values([b")\\x00\\x00\\x00\\x00\\x00\\x00\\xf8?", b" \\xac\\x02", b"", None])
>>> values.tolist(), missing.tolist()
([1.5, 300.0, nan, nan], [False, False, True, True])
>>> decode_timestamps([b"\\x08\\x80\\xe2\\xcf\\xaa\\x06\\x10\\xc0\\xa9\\xd3:", b"", None]).tolist()
[1700000000123, 0, -1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import feast_value_type_to_python_type
from google.protobuf.timestamp_pb2 import Timestamp  # type: ignore[import-untyped]

from streamscore.store.layout import DOUBLE_VAL, INT64_VAL, TS_NANOS, TS_SECONDS

__all__ = ["Cells", "decode_timestamps", "decode_timestamps_at", "decode_values", "decode_values_at"]

_VARINT_BYTES = 10  # the longest varint: a negative int64
# Zero bytes after the last cell, so reading a whole varint or double at any cell start never runs off the end.
_PAD = bytes(2 * (1 + _VARINT_BYTES))


@dataclass(frozen=True, slots=True)
class Cells:
    """Redis reply cells (``bytes`` or ``None``) laid end to end in one buffer, so that decoding is array work.

    Built with one C-level pass for the lengths and one ``join``: two cheap steps per cell, where a protobuf
    parse per cell would cost a dozen times more.
    """

    raw: list[bytes | None]
    buf: npt.NDArray[np.uint8]
    doubles: npt.NDArray[np.float64]  # doubles[i]: the 8 bytes from buf[i] on, little endian (an unaligned view)
    words: npt.NDArray[np.uint64]  # the same as an unsigned integer
    starts: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]  # 0 for None as for b""
    absent: npt.NDArray[np.bool_]  # None: no such field (or no hash at all)

    @classmethod
    def of(cls, raw: list[bytes | None]) -> Cells:
        n = len(raw)
        try:  # no None, the usual case: map and join run in C
            lengths = np.fromiter(map(len, raw), dtype=np.int64, count=n)  # type: ignore[arg-type]
            data = b"".join(raw) + _PAD  # type: ignore[arg-type]
            absent = np.zeros(n, dtype=np.bool_)
        except TypeError:  # some field or hash is absent
            lengths = np.fromiter([-1 if cell is None else len(cell) for cell in raw], dtype=np.int64, count=n)
            absent = lengths < 0
            lengths[absent] = 0
            # filter(None, ...) drops None and b"" alike: both are zero bytes long, so the offsets still hold.
            data = b"".join(filter(None, raw)) + _PAD
        buf = np.frombuffer(data, dtype=np.uint8)
        doubles = np.ndarray(shape=(len(data) - 7,), dtype="<f8", buffer=data, strides=(1,))
        words = np.ndarray(shape=(len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))
        ends = np.cumsum(lengths)
        return cls(raw, buf, doubles, words, ends - lengths, lengths, absent)


def _varints_bytewise(
    buf: npt.NDArray[np.uint8], at: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """:func:`_varints` one byte at a time over the rows still going: for the 9- and 10-byte varints."""
    byte = buf[at]
    value = (byte & 0x7F).astype(np.uint64)
    going = byte >= 0x80  # the continuation bit
    length = np.ones(at.shape[0], dtype=np.int64)
    for k in range(1, _VARINT_BYTES):
        rows = np.flatnonzero(going)
        if rows.shape[0] == 0:
            break
        byte = buf[at[rows] + k]
        value[rows] |= (byte & 0x7F).astype(np.uint64) << np.uint64(7 * k)
        length[rows] += 1
        going[rows] = byte >= 0x80
    length[going] = 0
    return value, length


def _u64(x: int) -> np.uint64:
    return np.uint64(x)


_MSBS, _SEPTETS = _u64(0x8080808080808080), _u64(0x7F7F7F7F7F7F7F7F)
# Squeezing out the continuation bits: 7-bit groups pair into 14 bits, then 28, then 56 (a branch-free "pext").
_SQUEEZE = (
    (_u64(0x007F007F007F007F), _u64(0x7F007F007F007F00), _u64(1)),
    (_u64(0x00003FFF00003FFF), _u64(0x3FFF00003FFF0000), _u64(2)),
    (_u64(0x000000000FFFFFFF), _u64(0x0FFFFFFF00000000), _u64(4)),
)


def _varints(cells: Cells, at: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """The varint starting at each offset ``at``: its value, and its length in bytes (0: no end in 10 bytes).

    Each row's next 8 bytes are one little-endian word; the varint ends at the first byte without the
    continuation bit, and bit masks squeeze its 7-bit groups together: a fixed dozen array operations, however
    long the varints. The rare varint longer than 8 bytes (an int64 of 2**56 or more, or a negative one) is
    decoded byte by byte.
    """
    word = cells.words[at]
    ends = ~word & _MSBS  # the top bit of every byte that ends a varint
    last = ends & (~ends + _u64(1))  # the first of them (0 if none in 8 bytes)
    x = word & (last + last - _u64(1)) & _SEPTETS  # the varint's bytes, continuation bits cleared
    for low, high, shift in _SQUEEZE:
        x = (x & low) | ((x & high) >> shift)
    _, exponent = np.frexp(last.astype(np.float64))  # last == 2**(8k + 7) for a varint of k + 1 bytes
    length = exponent.astype(np.int64) // 8
    long = np.flatnonzero(last == 0)
    if long.shape[0]:
        x[long], length[long] = _varints_bytewise(cells.buf, at[long])
    return x, length


def _fallback_value(cell: bytes | None) -> float | None:
    """Any encoding the fast path does not take, converted the way Feast's ``to_dict`` does, then to a float."""
    value = Value()
    value.ParseFromString(cell or b"")
    python = feast_value_type_to_python_type(value)
    if python is None or isinstance(python, bool | int | float):
        return None if python is None else float(python)
    raise ValueError(f"stored feature value {python!r} ({value.WhichOneof('val')}) is not a number")


def decode_values_at(
    cells: Cells, index: npt.NDArray[np.intp]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """The ``Value`` cells at ``index`` as floats, and which of them Feast would return as ``None``.

    ``index`` picks the value cells out of all the replies of a batch, so that every view decodes in one call.
    """
    buf, starts, lengths = cells.buf, cells.starts[index], cells.lengths[index]
    out = np.full(index.shape[0], np.nan)
    tag = buf[starts]
    missing = lengths == 0  # None, or b"": the empty Value, Feast's null
    done = missing.copy()

    double = ~missing & (tag == DOUBLE_VAL) & (lengths == 9)
    out[double] = cells.doubles[starts[double] + 1]
    done |= double

    integer = ~missing & (tag == INT64_VAL)
    if integer.any():
        rows = np.flatnonzero(integer)
        value, length = _varints(cells, starts[rows] + 1)
        whole = (length > 0) & (length + 1 == lengths[rows])  # exactly one varint, nothing after it
        rows = rows[whole]
        out[rows] = value[whole].view(np.int64).astype(np.float64)
        done[rows] = True

    for row in np.flatnonzero(~done).tolist():  # only for bytes neither our writer nor Feast's produces
        decoded = _fallback_value(cells.raw[int(index[row])])
        missing[row] = decoded is None
        out[row] = np.nan if decoded is None else decoded
    return out, missing


def decode_timestamps_at(cells: Cells, index: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
    """The ``Timestamp`` cells at ``index`` as epoch milliseconds (nanos floored), -1 where the field is absent."""
    buf, starts, lengths = cells.buf, cells.starts[index], cells.lengths[index]
    ends = starts + lengths
    has_seconds = (lengths > 0) & (buf[starts] == TS_SECONDS)
    seconds, seconds_length = _varints(cells, starts + 1)
    at = np.where(has_seconds, starts + 1 + seconds_length, starts)
    has_nanos = (at < ends) & (buf[at] == TS_NANOS)
    nanos, nanos_length = _varints(cells, at + 1)
    at = np.where(has_nanos, at + 1 + nanos_length, at)
    ok = (at == ends) & ~(has_seconds & (seconds_length == 0)) & ~(has_nanos & (nanos_length == 0))
    ms: npt.NDArray[np.int64] = (
        np.where(has_seconds, seconds.view(np.int64), 0) * 1000
        + np.where(has_nanos, nanos.view(np.int64), 0) // 1_000_000
    )
    for row in np.flatnonzero(~ok).tolist():  # field order swapped, or repeated: legal protobuf, never written
        stamp = Timestamp()
        stamp.ParseFromString(cells.raw[int(index[row])] or b"")
        ms[row] = stamp.seconds * 1000 + stamp.nanos // 1_000_000
    ms[cells.absent[index]] = -1
    return ms


def decode_values(cells: Sequence[bytes | None]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Serialized ``feast.types.Value`` cells (``None``: absent) as float64, and which Feast reads as ``None``.

    The fast path takes the two encodings this project stores (``double_val`` and ``int64_val``, as written by
    :mod:`streamscore.store.encoding` and by Feast); any other bytes are parsed with the protobuf library and
    converted as Feast's ``to_dict`` would, so a value is never misread. A non-numeric value raises ValueError.
    """
    raw = list(cells)
    return decode_values_at(Cells.of(raw), np.arange(len(raw)))


def decode_timestamps(cells: Sequence[bytes | None]) -> npt.NDArray[np.int64]:
    """Serialized ``google.protobuf.Timestamp`` cells as epoch milliseconds; -1 where a cell is ``None``.

    ``b""`` is the epoch itself (proto3 leaves zero fields out), which Feast also reads as 1970-01-01.
    """
    raw = list(cells)
    return decode_timestamps_at(Cells.of(raw), np.arange(len(raw)))
