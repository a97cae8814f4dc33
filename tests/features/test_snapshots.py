from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from streamscore.features.plan import compile_view
from streamscore.features.rules import Deduplicator
from streamscore.features.snapshots import SnapshotStore
from streamscore.features.stages import PartitionState
from streamscore.features.state import ViewState


def _plan(name: str, key: str, minutes: int):  # type: ignore[no-untyped-def]
    agg = SimpleNamespace(
        column="amount", function="sum", time_window=timedelta(minutes=minutes), slide_interval=timedelta(minutes=1)
    )
    agg.name = f"{name}_sum"
    return compile_view(name, key, [agg])


def test_a_stage_snapshot_loads_among_all_plans(tmp_path: Path) -> None:
    users, merchants = _plan("users", "user_id", 5), _plan("merchants", "merchant_id", 10)
    view = ViewState(users)
    rows = view.entity_rows(["u1", "u2"])
    view.apply(rows, np.array([60_000, 120_000]), np.array([[1.5], [2.5]]))
    dedup = Deduplicator(1000)
    dedup.seen("u1", "e1", 60_000, 0)
    store = SnapshotStore(tmp_path)
    store.save("ingest", 3, PartitionState({"users": view}, next_offset=42, dedup=dedup, source_high={1: 7}))

    # The ingest stage holds one of two views; loading is given every plan of the registry.
    loaded = store.load("ingest", 3, [merchants, users])
    assert loaded is not None
    assert loaded.next_offset == 42
    assert loaded.source_high == {1: 7}
    assert loaded.dedup is not None
    assert loaded.dedup.seen("u1", "e1", 60_000, 0)
    restored = loaded.views["users"]
    np.testing.assert_array_equal(restored.read(restored.entity_rows(["u1", "u2"])), view.read(rows))


def test_a_snapshot_of_other_definitions_is_ignored(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save("ingest", 0, PartitionState({"users": ViewState(_plan("users", "user_id", 5))}, next_offset=9))
    assert store.load("ingest", 0, [_plan("users", "user_id", 15)]) is None  # the window changed
    assert store.load("ingest", 1, [_plan("users", "user_id", 5)]) is None  # no file


def test_a_snapshot_from_another_cluster_or_unreadable_is_ignored(tmp_path: Path) -> None:
    plan = _plan("users", "user_id", 5)
    SnapshotStore(tmp_path, cluster_id="old").save("ingest", 0, PartitionState({"users": ViewState(plan)}))
    assert SnapshotStore(tmp_path, cluster_id="old").load("ingest", 0, [plan]) is not None
    assert SnapshotStore(tmp_path, cluster_id="new").load("ingest", 0, [plan]) is None  # offsets mean nothing
    (tmp_path / "ingest-1.npz").write_bytes(b"not a snapshot")
    assert SnapshotStore(tmp_path, cluster_id="old").load("ingest", 1, [plan]) is None
