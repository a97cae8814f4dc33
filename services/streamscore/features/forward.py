"""Accepted events re-keyed for the secondary-entity views, as columnar batches.

The ingest stage could forward each event as its own Kafka message, but then the rekey stage pays faust's
per-event cost and a second Avro decode for every event. Instead it sends one Arrow IPC batch per target
partition and input batch, holding only the columns the secondary views read, plus each event's source
offset (so a replay after a crash is recognised event by event). The target partition is chosen here,
from a stable hash of the entity key, because one merchant must always land in the same partition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from streamscore.kafka.partitioner import partitions_of

__all__ = ["FORMAT_HEADER", "decode_batch", "encode_batch", "target_partitions"]

FORMAT_HEADER = ("streamscore.forward", b"arrow-ipc-1")


def target_partitions(keys: Sequence[str], partitions: int) -> np.ndarray:
    """Partition of each key: crc32 modulo the partition count (stable across processes and runs)."""
    return partitions_of(keys, partitions, "crc32")


def encode_batch(columns: dict[str, pa.Array]) -> bytes:
    batch = pa.RecordBatch.from_pydict(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def decode_batch(data: bytes) -> pa.Table:
    """Raises ``pyarrow.ArrowInvalid`` for bytes that are not an Arrow IPC stream."""
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        return reader.read_all()
