"""Recovery points of the feature processor: one file per (stage, partition), written atomically.

A snapshot holds the partition's window state *and* the next input offset it covers; offsets are
acknowledged to Kafka only after the snapshot that covers them is on disk. After a crash the processor
loads the snapshot, replays from its offset (anything already inside is skipped), and rewrites the same
online values: at-least-once delivery plus idempotent online writes give the uninterrupted run's state.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from streamscore.features.plan import ViewPlan
from streamscore.features.rules import Deduplicator
from streamscore.features.stages import PartitionState
from streamscore.features.state import ViewState

__all__ = ["SnapshotStore"]

_FORMAT = 2
log = logging.getLogger(__name__)


class SnapshotStore:
    """``cluster_id`` ties snapshots to the Kafka cluster whose offsets they hold: a snapshot from another
    cluster (or one wiped and recreated) is ignored rather than skipping offsets that do not exist."""

    def __init__(self, directory: Path, *, cluster_id: str = "") -> None:
        self.directory = directory
        self.cluster_id = cluster_id
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str, partition: int) -> Path:
        return self.directory / f"{stage}-{partition}.npz"

    def save(self, stage: str, partition: int, state: PartitionState) -> None:
        meta = {
            "format": _FORMAT,
            "cluster_id": self.cluster_id,
            "next_offset": state.next_offset,
            "source_high": {str(k): v for k, v in state.source_high.items()},
            "dedup": None if state.dedup is None else {
                "allowed_lag_ms": state.dedup.allowed_lag_ms,
                "users": state.dedup.to_dict(),
            },
            "views": sorted(state.views),
            "plans": {name: repr(view.plan) for name, view in state.views.items()},
        }  # fmt: skip
        blobs = {f"view:{name}": np.frombuffer(view.to_bytes(), np.uint8) for name, view in state.views.items()}
        blobs["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **blobs)  # type: ignore[arg-type]
        target = self.path(stage, partition)
        tmp = target.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(target)

    def _read(self, target: Path, plans: list[ViewPlan]) -> tuple[dict[str, Any], dict[str, ViewState]] | None:
        with np.load(target, allow_pickle=False) as blob:
            meta = json.loads(blob["meta"].tobytes())
            by_name = {p.name: p for p in plans}
            plans_now = {name: repr(by_name[name]) for name in meta.get("views", []) if name in by_name}
            if (
                meta.get("format") != _FORMAT
                or meta.get("cluster_id") != self.cluster_id
                or meta.get("plans") != plans_now
            ):
                return None
            views = {
                name: ViewState.from_bytes(by_name[name], blob[f"view:{name}"].tobytes()) for name in meta["views"]
            }
        return meta, views

    def load(self, stage: str, partition: int, plans: list[ViewPlan]) -> PartitionState | None:
        """The saved state, or None if there is none or it was made for other feature definitions."""
        target = self.path(stage, partition)
        if not target.exists():
            return None
        try:
            loaded = self._read(target, plans)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # lz4 raises RuntimeError
            log.warning("ignoring unreadable snapshot %s: %s", target, exc)
            return None
        if loaded is None:
            log.warning("ignoring snapshot %s: other format, cluster or feature definitions", target)
            return None
        meta, views = loaded
        dedup = None
        if meta["dedup"] is not None:
            users = {u: [(int(t), str(i)) for t, i in entries] for u, entries in meta["dedup"]["users"].items()}
            dedup = Deduplicator.from_dict(int(meta["dedup"]["allowed_lag_ms"]), users)
        return PartitionState(
            views,
            next_offset=int(meta["next_offset"]),
            dedup=dedup,
            source_high={int(k): int(v) for k, v in meta["source_high"].items()},
        )
