"""write_parquet: the schema and dtypes readers rely on, row groups, progress, no half-written files."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamscore.generator import ARROW_SCHEMA, GeneratorConfig, generate_frame, write_parquet

CONFIG = GeneratorConfig(events=12_345, seed=21, users=200, merchants=50)


def test_round_trip_schema_and_dtypes(tmp_path):
    path = tmp_path / "tx.parquet"
    steps: list[int] = []
    assert write_parquet(CONFIG, path, steps.append, row_group_size=5000) == CONFIG.events
    assert steps == [5000, 5000, 2345]

    parquet = pq.ParquetFile(path)
    assert parquet.schema_arrow.equals(ARROW_SCHEMA)
    assert parquet.schema_arrow.field("event_time").type == pa.timestamp("ms", tz="UTC")
    assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)] == [5000, 5000, 2345]

    frame = pd.read_parquet(path)
    assert frame.dtypes.astype(str).to_dict() == {
        "event_id": "object",
        "user_id": "object",
        "merchant_id": "object",
        "amount": "float64",
        "currency": "object",
        "country": "object",
        "channel": "object",
        "event_time": "datetime64[ms, UTC]",
        "is_fraud": "bool",
    }
    pd.testing.assert_frame_equal(frame, generate_frame(CONFIG))


def test_empty_stream_writes_a_valid_empty_file(tmp_path):
    path = tmp_path / "empty.parquet"
    assert write_parquet(GeneratorConfig(events=0), path) == 0
    assert pq.read_table(path).schema.equals(ARROW_SCHEMA)
    assert pq.read_table(path).num_rows == 0


def test_interrupted_write_leaves_no_file(tmp_path):
    path = tmp_path / "tx.parquet"

    def stop(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_parquet(CONFIG, path, stop, row_group_size=1000)
    assert list(tmp_path.iterdir()) == []
