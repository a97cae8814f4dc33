"""Feast's Redis values, written column-wise with numpy instead of one protobuf object per value.

Feast stores a feature as a serialized ``feast.types.Value`` and an event time as a serialized
``google.protobuf.Timestamp``. Both are tiny messages whose wire format is fixed by the protobuf spec, so a whole
column can be laid out as a numpy record array (tag byte + payload) and cut into ``bytes`` in one ``astype``:
roughly ten times faster than ``Value(double_val=v).SerializeToString()`` per value (``tests/store`` checks
every encoder byte for byte against the protobuf library and against Feast's own write path).

Results are numpy ``object`` arrays of ``bytes`` so callers can place them into a command table without a
Python loop. A null value (NaN, or a masked int) is ``b""``: the empty ``Value`` Feast itself writes for a
missing value and reads back as ``None``.

This is the write side of one format; :mod:`~streamscore.store.decoding` is its read side, and both take the
tag bytes from :mod:`~streamscore.store.layout`, so the two cannot drift apart.

>>> encode_doubles(np.array([1.5, np.nan])).tolist()
[b')\\x00\\x00\\x00\\x00\\x00\\x00\\xf8?', b'']
>>> encode_int64s(np.array([0, 300, -1])).tolist()
[b' \\x00', b' \\xac\\x02', b' \\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x01']
>>> encode_timestamps(np.array([1_700_000_000_123])).tolist()
[b'\\x08\\x80\\xe2\\xcf\\xaa\\x06\\x10\\xc0\\xa9\\xd3:']
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from streamscore.store.layout import DOUBLE_VAL, INT64_VAL, TS_NANOS, TS_SECONDS

__all__ = ["encode_doubles", "encode_int64s", "encode_timestamps"]

_DOUBLE_RECORD = np.dtype([("tag", "u1"), ("value", "<f8")])  # packed: 9 bytes, exactly the message


def _objects(records: npt.NDArray[np.void]) -> npt.NDArray[np.object_]:
    # A void scalar converts to bytes of its full width: no trailing-NUL stripping as with "S" dtypes.
    return records.astype(object)


def encode_doubles(values: npt.ArrayLike) -> npt.NDArray[np.object_]:
    """``Value(double_val=v).SerializeToString()`` per value, ``b""`` (null) where NaN."""
    v = np.asarray(values, dtype=np.float64)
    records = np.empty(v.shape[0], dtype=_DOUBLE_RECORD)
    records["tag"] = DOUBLE_VAL
    records["value"] = v
    out = _objects(records.view("V9"))
    out[np.isnan(v)] = b""
    return out


def _varint_lengths(u: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    lengths = np.ones(u.shape[0], dtype=np.int64)
    for k in range(1, 10):
        lengths += u >= np.uint64(1 << (7 * k))
    return lengths


def _tagged_varints(tag: int, u: npt.NDArray[np.uint64]) -> npt.NDArray[np.object_]:
    """``tag`` + the varint of each value, grouped by encoded length so each group is one fixed-width array."""
    out = np.empty(u.shape[0], dtype=object)
    lengths = _varint_lengths(u)
    for width in np.unique(lengths).tolist():
        rows = lengths == width
        group = u[rows]
        shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
        septets = ((group[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
        septets[:, :-1] |= 0x80  # continuation bit on every byte but the last
        records = np.empty((group.shape[0], width + 1), dtype=np.uint8)
        records[:, 0] = tag
        records[:, 1:] = septets
        out[rows] = _objects(records.view(f"V{width + 1}").ravel())
    return out


def encode_int64s(values: npt.ArrayLike, null: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.object_]:
    """``Value(int64_val=v).SerializeToString()`` per value, ``b""`` (null) where ``null`` is set."""
    v = np.asarray(values, dtype=np.int64)
    out = _tagged_varints(INT64_VAL, v.view(np.uint64))
    if null is not None:
        out[null] = b""
    return out


def encode_timestamps(epoch_ms: npt.ArrayLike) -> npt.NDArray[np.object_]:
    """``Timestamp`` bytes per epoch-millisecond value, as Feast's ``Timestamp.FromDatetime`` leaves them.

    Seconds round towards minus infinity and nanos stay in [0, 1e9), as the Timestamp spec requires (this matters
    before 1970 only). Zero fields are left out, as proto3 does.
    """
    ms = np.asarray(epoch_ms, dtype=np.int64)
    seconds, millis = np.divmod(ms, 1000)
    nanos = millis * 1_000_000
    head = _tagged_varints(TS_SECONDS, seconds.view(np.uint64))
    head[seconds == 0] = b""
    tail = _tagged_varints(TS_NANOS, nanos.view(np.uint64))
    tail[nanos == 0] = b""
    out: npt.NDArray[np.object_] = head + tail  # object arrays add elementwise: bytes concatenation
    return out
