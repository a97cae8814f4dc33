"""Shared by the training tests: the generated history they all train on, and a data directory per module.

Each test module gets its own data directory (its own Feast file registry, offline tables and MLflow database)
with :func:`data_dir_with`, so modules never see each other's models. Nothing here needs Kafka or Redis.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from streamscore.features import backfill, load_plans, rules_for
from streamscore.generator import GeneratorConfig, write_parquet
from streamscore.settings import Settings
from streamscore.store import apply_definitions

VIEWS = ("user_transactions", "merchant_transactions")
CONFIG = GeneratorConfig(
    events=20_000, rate=0.5, seed=3, fraud_rate=0.03, users=300, merchants=80, start=datetime(2026, 1, 1, tzinfo=UTC)
)


@dataclass(frozen=True)
class History:
    """The generated events and the backfilled offline tables, and the range they cover."""

    events: Path
    offline: Path  # <view>.parquet for each of VIEWS
    start: datetime
    end: datetime


def settings_for(data_dir: Path, **training: object) -> Settings:
    """Local-only settings on ``data_dir`` (``training`` overriding that section): no metrics server, and Kafka
    and Redis are never contacted."""
    settings = Settings(data_dir=data_dir, metrics_port=0)
    if training:
        settings = settings.model_copy(update={"training": settings.training.model_copy(update=training)})
    return settings


def make_history(root: Path) -> History:
    """Generate :data:`CONFIG` into ``root`` and backfill its offline tables over the generated range."""
    settings = settings_for(root)
    apply_definitions(settings)
    events = root / "events.parquet"
    write_parquet(CONFIG, events)
    start = CONFIG.start
    end = start + timedelta(seconds=CONFIG.events / CONFIG.rate)
    plans = load_plans(settings)
    backfill(events, plans, root / "offline", start=start, end=end, rules=rules_for(settings, plans))
    return History(events=events, offline=root / "offline", start=start, end=end)


def data_dir_with(history: History, data_dir: Path, **training: object) -> Settings:
    """Settings (``training`` overriding its section) on a fresh ``data_dir`` whose Feast registry has the
    definitions applied and whose offline tables are copies of the history's backfill."""
    settings = settings_for(data_dir, **training)
    apply_definitions(settings)
    (data_dir / "offline").mkdir(parents=True)
    for view in VIEWS:
        shutil.copy(history.offline / f"{view}.parquet", data_dir / "offline" / f"{view}.parquet")
    return settings
