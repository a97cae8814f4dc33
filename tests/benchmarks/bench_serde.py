"""Avro serde: our framed, type-guarded encode/decode vs bare fastavro schemaless calls on the same records.

The baseline is the floor (no framing, no type guard, no schema resolution); the ratio is the price of
the safety the framing buys.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import fastavro

from streamscore.serde import Serde
from streamscore.serde.columnar import ColumnarDecoder
from tests.serde.samples import sample_record

N = 50_000


def _rate(fn: Callable[[], Any], n: int) -> float:
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        fn()
        best = max(best, n / (time.perf_counter() - start))
    return best


def run() -> str:
    serde = Serde("transaction")
    schema = serde.schema
    record = sample_record("transaction")
    framed = serde.encode(record)
    body = framed[10:]

    def raw_encode() -> None:
        for _ in range(N):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, schema, record)
            buf.getvalue()

    def our_encode() -> None:
        for _ in range(N):
            serde.encode(record)

    def raw_decode() -> None:
        for _ in range(N):
            fastavro.schemaless_reader(io.BytesIO(body), schema, None)

    def our_decode() -> None:
        for _ in range(N):
            serde.decode(framed)

    # The feature processor's path: whole batches into Arrow columns (distinct messages, a batch of 5,000).
    decoder = ColumnarDecoder(serde)
    batch = [serde.encode({**record, "event_id": f"evt-{i:09d}", "amount": i * 0.01}) for i in range(5_000)]
    decoder.decode(batch[:10])  # numba compiles (or loads its cache) once

    def columnar_decode() -> None:
        for _ in range(N // len(batch)):
            decoder.decode(batch)

    rows = []
    for what, raw, ours in (("encode", raw_encode, our_encode), ("decode", raw_decode, our_decode)):
        base, mine = _rate(raw, N), _rate(ours, N)
        rows.append(f"| transaction {what} | {base:,.0f} | {mine:,.0f} | {mine / base:.2f} |")
    base, mine = _rate(raw_decode, N), _rate(columnar_decode, N)
    rows.append(
        f"| transaction decode, batches of 5,000 into Arrow columns | {base:,.0f} | {mine:,.0f} | {mine / base:.2f} |"
    )
    return "\n".join(
        [
            "### Avro serde (records/s, one core, best of 3 x 50k)",
            "",
            "| operation | bare fastavro schemaless (baseline) | streamscore Serde | ratio |",
            "| --- | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    )
