"""Windowed features from Feast definitions: one plan, one set of numba kernels, two paths.

The stream path (`streamscore features run`: ``processor.py``, fed by faust in ``app.py`` or by plain
consumers in ``kafka_engine.py``) applies Kafka batches to per-entity tile rings and writes changed entities
to the Feast online store; the batch path (:func:`backfill`, or ``backfill_spark.py`` on Spark) runs the
same kernels over Parquet history and writes the offline tables Feast's historical retrieval reads.
:func:`load_plans` compiles the registry's stream feature views: ``feature_repo/definitions.py`` is the only
place a feature is defined.
"""

from __future__ import annotations

from streamscore.features.backfill import BackfillReport, backfill
from streamscore.features.plan import FeatureSpec, PlanError, ViewPlan, compile_view, compile_views
from streamscore.features.rules import EventRules
from streamscore.features.state import ViewState
from streamscore.settings import Settings

__all__ = [
    "BackfillReport",
    "EventRules",
    "FeatureSpec",
    "PlanError",
    "ViewPlan",
    "ViewState",
    "backfill",
    "compile_view",
    "compile_views",
    "load_plans",
    "rules_for",
]


def load_plans(settings: Settings) -> list[ViewPlan]:
    """Plans of every stream feature view in the Feast registry (run `streamscore features apply` first)."""
    from streamscore.store import feature_store, quiet_feast

    store = feature_store(settings)
    with quiet_feast():
        views = store.list_stream_feature_views()
        join_keys = {e.name: e.join_key for e in store.list_entities()}
    if not views:
        raise PlanError("the Feast registry has no stream feature views: run `streamscore features apply`")
    return compile_views(views, join_keys)


def rules_for(settings: Settings, plans: list[ViewPlan]) -> EventRules:
    """Acceptance rules: the sources' watermark delay and the processor's lateness settings."""
    return EventRules(
        watermark_delay_ms=max(p.watermark_delay_ms for p in plans),
        allowed_lateness_ms=round(settings.features.allowed_lateness_s * 1000),
        max_future_ms=round(settings.features.max_future_s * 1000),
        bounds=settings.input.bounds,
    )
