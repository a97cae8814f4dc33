"""Which partition a key belongs to, computed the way producers compute it.

The feature processor keeps a user's state where that user's events arrive, so it must know that every
event of a user arrives in one partition: it recomputes each event's partition from its user id and
compares. Two producer defaults exist: librdkafka's (confluent-kafka, and this project's producers):
CRC-32 of the key modulo the partition count, and the Java client's: murmur2 of the key, positive, modulo
the count. ``STREAMSCORE_TOPICS__PARTITIONER`` says which the producers use.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = ["LIBRDKAFKA_NAMES", "Partitioner", "murmur2", "partitions_of"]

Partitioner = Literal["crc32", "murmur2"]
LIBRDKAFKA_NAMES: dict[str, str] = {"crc32": "consistent_random", "murmur2": "murmur2_random"}

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as an unsigned 32-bit value."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def _partition(key: bytes, partitions: int, kind: Partitioner) -> int:
    if kind == "murmur2":
        return (murmur2(key) & 0x7FFFFFFF) % partitions
    return zlib.crc32(key) % partitions


def partitions_of(keys: Sequence[str], partitions: int, kind: Partitioner = "crc32") -> np.ndarray:
    """The partition of each key (each distinct key hashed once)."""
    uniques, inverse = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    hashed = np.fromiter((_partition(str(k).encode(), partitions, kind) for k in uniques), np.int64, len(uniques))
    return hashed[inverse]
