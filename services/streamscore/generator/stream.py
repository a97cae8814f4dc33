"""The generated stream as consumers want it: chunks of Avro-ready records, Arrow tables, or one DataFrame.

Internally events are structured numpy arrays of small integers (user, merchant, channel indices); they
become strings only here, a chunk at a time, so memory stays bounded by the chunk size. Chunks are cut
from the emission-ordered stream after the fact: the records do not depend on ``chunk_size``.

>>> from streamscore.generator.config import GeneratorConfig
>>> chunks = list(generate(GeneratorConfig(events=25, seed=3), chunk_size=10))
>>> [len(c) for c in chunks]
[10, 10, 5]
>>> sorted(chunks[0][0]) == sorted(TRANSACTION_FIELDS)
True
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.typing import NDArray

from streamscore.generator.config import GeneratorConfig
from streamscore.generator.disorder import emission_order
from streamscore.generator.events import event_time_blocks
from streamscore.generator.profiles import CHANNELS, COUNTRIES, CURRENCIES, Population

__all__ = ["ARROW_SCHEMA", "DEFAULT_CHUNK_SIZE", "TRANSACTION_FIELDS", "generate", "generate_frame", "generate_tables"]

DEFAULT_CHUNK_SIZE = 10_000

# The fields of schemas/transaction.avsc, in its order.
TRANSACTION_FIELDS = (
    "event_id",
    "user_id",
    "merchant_id",
    "amount",
    "currency",
    "country",
    "channel",
    "event_time",
    "is_fraud",
)

ARROW_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("event_time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("is_fraud", pa.bool_()),  # nullable, as in the Avro schema (labels arrive late)
    ]
)

_CHANNEL_NAMES = np.array(CHANNELS, dtype=object)
_COUNTRY_NAMES = np.array(COUNTRIES, dtype=object)
_CURRENCY_NAMES = np.array(CURRENCIES, dtype=object)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_DIGITS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def generate(config: GeneratorConfig, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[list[dict[str, Any]]]:
    """Records (dicts that ``Serde("transaction").encode`` takes) in emission order, ``chunk_size`` at most
    per chunk. ``event_time`` is a timezone-aware UTC datetime with whole milliseconds."""
    people, chunks = _chunks(config, chunk_size)
    for chunk in chunks:
        yield _records(_columns(chunk, people))


def generate_tables(config: GeneratorConfig, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[pa.Table]:
    """The same stream as :func:`generate`, as Arrow tables with :data:`ARROW_SCHEMA` (no dicts built)."""
    people, chunks = _chunks(config, chunk_size)
    for chunk in chunks:
        yield _table(_columns(chunk, people))


def generate_frame(config: GeneratorConfig, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> pd.DataFrame:
    """The whole stream as one DataFrame in emission order (for tests and backfills that fit in memory).

    Columns are :data:`TRANSACTION_FIELDS`; ``event_time`` is ``datetime64[ms, UTC]``, exactly what reading
    the Parquet file of :func:`~streamscore.generator.sinks.write_parquet` gives.
    """
    tables = list(generate_tables(config, chunk_size=chunk_size)) or [ARROW_SCHEMA.empty_table()]
    return pa.concat_tables(tables).to_pandas()


def _chunks(config: GeneratorConfig, chunk_size: int) -> tuple[Population, Iterator[NDArray[np.void]]]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    people = Population.build(config.users, config.merchants, config.seed)
    emitted = emission_order(event_time_blocks(config, people), config)
    return people, _rechunk(emitted, chunk_size)


def _rechunk(blocks: Iterable[NDArray[np.void]], size: int) -> Iterator[NDArray[np.void]]:
    pending: list[NDArray[np.void]] = []
    count = 0
    for block in blocks:
        pending.append(block)
        count += len(block)
        if count < size:
            continue
        joined = np.concatenate(pending)
        full = len(joined) - len(joined) % size
        for start in range(0, full, size):
            yield joined[start : start + size]
        pending, count = [joined[full:]], len(joined) - full
    if count:
        yield np.concatenate(pending)


def _columns(chunk: NDArray[np.void], people: Population) -> dict[str, NDArray[Any]]:
    country = people.merchant_country[chunk["merchant"]]
    return {
        "event_id": _uuid_text(chunk["id"]),
        "user_id": people.user_ids[chunk["user"]],
        "merchant_id": people.merchant_ids[chunk["merchant"]],
        "amount": chunk["amount"],
        "currency": _CURRENCY_NAMES[country],
        "country": _COUNTRY_NAMES[country],
        "channel": _CHANNEL_NAMES[chunk["channel"]],
        "event_time": chunk["event_ms"],
        "is_fraud": chunk["fraud"],
    }


def _uuid_text(raw: NDArray[np.uint8]) -> NDArray[np.str_]:
    """Canonical 8-4-4-4-12 UUID strings for a whole chunk at once (ASCII bytes filled by indexing)."""
    n = len(raw)
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    digits = np.empty((n, 32), dtype=np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 0x0F]
    text[:, _UUID_DIGITS] = digits
    return text.view("S36").reshape(n).astype("U36")


def _records(columns: dict[str, NDArray[Any]]) -> list[dict[str, Any]]:
    # datetime64 -> object gives naive datetimes in C; only attaching the zone is left per event.
    naive = columns["event_time"].astype("datetime64[ms]").astype(object)
    values = [columns[name].tolist() for name in TRANSACTION_FIELDS]
    values[TRANSACTION_FIELDS.index("event_time")] = [moment.replace(tzinfo=UTC) for moment in naive]
    return [dict(zip(TRANSACTION_FIELDS, row, strict=True)) for row in zip(*values, strict=True)]


def _table(columns: dict[str, NDArray[Any]]) -> pa.Table:
    arrays = [pa.array(columns[field.name], type=field.type) for field in ARROW_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)
