"""The training set: labelled transactions joined point-in-time with the FeatureService through Feast.

Each label row asks Feast for the features *as a score request for that transaction would have seen them*:
the entity timestamp is one millisecond before the transaction's event time, so the transaction itself is
not in its own velocity features (serving scores a request before its transaction is processed). The
request-time features come from the same :func:`~streamscore.features.request.request_features` serving uses.

Feast's file offline store drops a label row that a view has no value for yet (a user's first
transaction). Serving scores such a request with defaults, so training must too: rows are joined back
by their position among the labels and their missing features stay NaN until the model's defaults fill them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from streamscore.errors import StreamscoreError
from streamscore.features.request import REQUEST_FEATURES, request_features
from streamscore.settings import Settings

__all__ = ["SPLITS", "TrainingDataError", "TrainingSet", "build_training_set", "service_features"]

SPLITS = ("train", "validation", "test")
ENTITY_OFFSET = timedelta(milliseconds=1)
# Label rows per get_historical_features call, by `training.offline_store`. Feast's DuckDB store grows faster than
# linearly with the rows of one call (10k: 0.5 s, 50k: 14 s), so it is asked 10k at a time. The ASOF store is
# linear (1M label rows in 1.9 s, BENCHMARKS.md): one call, chunked only to bound the frames held at once. The Spark
# store re-reads every feature table per call, so it too takes a million at a time.
_CHUNK_ROWS = {"asof": 1_000_000, "duckdb": 10_000, "spark": 1_000_000}

Progress = Callable[[int, int], None]


class TrainingDataError(StreamscoreError):
    """The requested data cannot train a trustworthy model (empty window, too few frauds, no features)."""


@dataclass(frozen=True)
class TrainingSet:
    """Rows in event-time order with their split, label, inputs (NaN = missing) and the split windows."""

    frame: pd.DataFrame  # event_id, event_time, split, label, then one column per input
    store_features: tuple[str, ...]
    request_features: tuple[str, ...]
    windows: dict[str, tuple[datetime, datetime]]

    @property
    def features(self) -> tuple[str, ...]:
        return self.store_features + self.request_features

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs float64 with NaN for missing, labels int8) of one split."""
        rows = self.frame[self.frame["split"] == name]
        return rows[list(self.features)].to_numpy(np.float64), rows["label"].to_numpy(np.int8)


def service_features(store: Any, service: str) -> list[tuple[str, str]]:
    """(view, feature) of a FeatureService in its declared order: the model's input order."""
    try:
        projections = store.get_feature_service(service).feature_view_projections
    except Exception as exc:  # Feast raises its own FeatureServiceNotFoundException
        raise TrainingDataError(
            f"feature service {service!r} is not registered: run `streamscore features apply`"
        ) from exc
    return [(p.name_to_use(), f.name) for p in projections for f in p.features]


def _labelled(events: Path, start: datetime, end: datetime) -> pd.DataFrame:
    if not events.exists():
        raise TrainingDataError(f"no labelled transactions at {events}: generate or export them first")
    columns = ["event_id", "user_id", "merchant_id", "amount", "channel", "event_time", "is_fraud"]
    table = pq.read_table(
        events, columns=columns, filters=[("event_time", ">=", start), ("event_time", "<", end)]
    )  # fmt: skip
    frame = table.to_pandas()
    frame = frame[frame["is_fraud"].notna() & np.isfinite(frame["amount"]) & (frame["amount"] >= 0)]
    # A redelivered transaction is one label, not two; keep its first arrival.
    frame = frame.drop_duplicates("event_id", keep="first")
    return frame.sort_values("event_time", kind="stable").reset_index(drop=True)


def _windows(start: datetime, end: datetime, settings: Settings) -> dict[str, tuple[datetime, datetime]]:
    span = end - start
    test_from = end - span * settings.training.test_fraction
    validation_from = test_from - span * settings.training.validation_fraction
    return {"train": (start, validation_from), "validation": (validation_from, test_from), "test": (test_from, end)}


def build_training_set(
    settings: Settings, store: Any, events: Path, start: datetime, end: datetime, *, progress: Progress | None = None
) -> TrainingSet:
    """Labelled transactions in ``[start, end)`` from ``events`` (Parquet, the generator's schema), with
    the features of ``settings.training.feature_service`` as of just before each one."""
    from streamscore.store import quiet_feast

    if end <= start:
        raise TrainingDataError(f"empty window: end {end.isoformat()} is not after start {start.isoformat()}")
    labels = _labelled(events, start, end)
    if labels.empty:
        raise TrainingDataError(f"no labelled transactions between {start.isoformat()} and {end.isoformat()}")
    with quiet_feast():
        features = service_features(store, settings.training.feature_service)
        service = store.get_feature_service(settings.training.feature_service)
    names = [name for _, name in features]
    # Rows come back keyed by their position: an integer key, where joining back on the event id (a string) cost
    # more than the point-in-time join itself at 1M rows (pandas factorizes and sorts strings to merge them).
    entity = pd.DataFrame(
        {
            "label_row": np.arange(len(labels)),
            "user_id": labels["user_id"],
            "merchant_id": labels["merchant_id"],
            "event_timestamp": labels["event_time"].astype("datetime64[ms, UTC]") - ENTITY_OFFSET,
        }
    )
    parts = []
    chunk_rows = _CHUNK_ROWS[settings.training.offline_store]
    for first in range(0, len(entity), chunk_rows):
        chunk = entity.iloc[first : first + chunk_rows]
        try:
            with quiet_feast():
                got = store.get_historical_features(entity_df=chunk, features=service).to_df()
        except (OSError, duckdb.IOException) as exc:  # Feast's DuckDB store: IOException, not an OSError
            raise TrainingDataError(f"offline features missing ({exc}): run `streamscore backfill` first") from None
        missing = [n for n in names if n not in got.columns]
        if missing:
            raise TrainingDataError(f"offline store has no column(s) {missing}: backfill with the current definitions")
        parts.append(got[["label_row", *names]])
        if progress is not None:
            progress(min(first + chunk_rows, len(entity)), len(entity))
    found = pd.concat(parts, ignore_index=True).set_index("label_row")
    if not found.index.is_unique:
        raise TrainingDataError("the offline store answered some label rows more than once")
    found = found.reindex(labels.index)  # rows the store dropped (no history yet) come back all NaN
    stored = {n: found[n].to_numpy(np.float64, na_value=np.nan) for n in names}
    requested = request_features(labels["amount"].to_numpy(), labels["channel"].to_numpy(), stored)
    windows = _windows(start, end, settings)
    event_time = labels["event_time"]
    split = np.full(len(labels), "train", dtype=object)
    for name in ("validation", "test"):
        split[(event_time >= windows[name][0]).to_numpy()] = name
    frame = pd.DataFrame(
        {"event_id": labels["event_id"], "event_time": event_time, "split": split,
         "label": labels["is_fraud"].astype(np.int8), **stored, **requested}
    )  # fmt: skip
    _check_labels(frame, settings.training.min_positives)
    return TrainingSet(frame, tuple(names), REQUEST_FEATURES, windows)


def _check_labels(frame: pd.DataFrame, min_positives: int) -> None:
    for name in SPLITS:
        labels = frame.loc[frame["split"] == name, "label"]
        positives = int(labels.sum())
        if positives < min_positives or positives == len(labels):
            raise TrainingDataError(
                f"the {name} window has {positives} fraud label(s) among {len(labels):,} rows; at least "
                f"{min_positives} positives and some negatives are needed (widen --start/--end)"
            )
