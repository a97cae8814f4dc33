"""Compile Feast's feature definitions into the window plan the engine runs.

Feast describes *what* a feature is (``Aggregation(column, function, time_window, slide_interval)``);
the plan says *how* we keep it: one ring of tiles per entity, ``slide_interval`` wide, enough of them to
cover the longest window, and one running aggregate per distinct window length. The stream processor and
the backfill both run this plan, so there is no second list of windows anywhere.

Window semantics (shared by stream, backfill and tests): at instant ``t`` a window of length ``W`` with
slide ``s`` covers the events of its entity with ``floor(t/s)*s + s - W <= event_time <= t``: the tile that
holds ``t`` and the ``W/s - 1`` tiles before it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from streamscore.errors import StreamscoreError

__all__ = ["FUNCTIONS", "FeatureSpec", "PlanError", "ViewPlan", "compile_view", "compile_views"]

Function = Literal["count", "sum", "mean", "min", "max", "count_distinct", "seconds_since_previous"]
FUNCTIONS: tuple[Function, ...] = ("count", "sum", "mean", "min", "max", "count_distinct", "seconds_since_previous")
TAG_AGGREGATE = "streamscore.aggregate"
TAG_COLUMN = "streamscore.column"


class PlanError(StreamscoreError, ValueError):
    """Feature definitions the engine cannot run; the message names the view and the feature, or says to run
    ``streamscore features apply`` when the Feast registry has no stream feature view yet."""


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    function: Function
    column: str
    window_ms: int  # 0 for features without a window (seconds_since_previous)

    @property
    def is_integer(self) -> bool:
        return self.function in ("count", "count_distinct")


@dataclass(frozen=True)
class ViewPlan:
    """Everything the kernels need for one feature view, as plain numbers."""

    name: str
    entity_key: str
    slide_ms: int
    features: tuple[FeatureSpec, ...]
    numeric_columns: tuple[str, ...]
    windows_ms: tuple[int, ...]  # distinct lengths of numeric windows, ascending
    distinct_column: str | None
    distinct_windows_ms: tuple[int, ...]
    time_column: str = "event_time"
    watermark_delay_ms: int = 0  # the stream source's watermark_delay_threshold

    @property
    def n_tiles(self) -> int:
        longest = max((*self.windows_ms, *self.distinct_windows_ms), default=self.slide_ms)
        return longest // self.slide_ms

    @property
    def horizon_ms(self) -> int:
        return self.n_tiles * self.slide_ms

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def _ms(delta: timedelta | None) -> int:
    return 0 if delta is None else round(delta.total_seconds() * 1000)


def compile_view(
    name: str,
    entity_key: str,
    aggregations: Iterable[Any],
    tagged_fields: Iterable[tuple[str, dict[str, str]]] = (),
    *,
    time_column: str = "event_time",
    watermark_delay_ms: int = 0,
) -> ViewPlan:
    """Plan one view from Feast ``Aggregation`` objects and ``(field name, tags)`` of tagged fields."""
    features: list[FeatureSpec] = []
    slides: set[int] = set()
    for agg in aggregations:
        fn = str(agg.function)
        label = agg.name or f"{fn}_{agg.column}"
        if fn not in FUNCTIONS or fn == "seconds_since_previous":
            raise PlanError(f"{name}.{label}: unsupported aggregation function {fn!r}")
        window, slide = _ms(agg.time_window), _ms(agg.slide_interval) or _ms(agg.time_window)
        if window <= 0 or slide <= 0:
            raise PlanError(f"{name}.{label}: time_window and slide_interval must be positive")
        if window % slide:
            raise PlanError(f"{name}.{label}: time_window {agg.time_window} is not a multiple of {agg.slide_interval}")
        slides.add(slide)
        features.append(FeatureSpec(label, fn, agg.column, window))
    for field_name, tags in tagged_fields:
        kind = tags.get(TAG_AGGREGATE)
        if kind is None:
            continue
        if kind != "seconds_since_previous":
            raise PlanError(f"{name}.{field_name}: unknown {TAG_AGGREGATE} tag {kind!r}")
        features.append(FeatureSpec(field_name, "seconds_since_previous", tags.get(TAG_COLUMN, time_column), 0))
    if not features:
        raise PlanError(f"{name}: no aggregations to compute")
    if len(slides) > 1:
        raise PlanError(f"{name}: all aggregations of a view must share one slide_interval, got {sorted(slides)} ms")
    numeric = sorted({f.column for f in features if f.function in ("count", "sum", "mean", "min", "max")})
    distinct = sorted({f.column for f in features if f.function == "count_distinct"})
    if len(distinct) > 1:
        raise PlanError(f"{name}: count_distinct over more than one column ({distinct}) is not supported")
    return ViewPlan(
        name=name,
        entity_key=entity_key,
        slide_ms=slides.pop() if slides else 60_000,
        features=tuple(features),
        numeric_columns=tuple(numeric),
        windows_ms=tuple(
            sorted({f.window_ms for f in features if f.function not in ("count_distinct",) and f.window_ms})
        ),
        distinct_column=distinct[0] if distinct else None,
        distinct_windows_ms=tuple(sorted({f.window_ms for f in features if f.function == "count_distinct"})),
        time_column=time_column,
        watermark_delay_ms=watermark_delay_ms,
    )


def compile_views(stream_feature_views: Iterable[Any], join_keys: dict[str, str]) -> list[ViewPlan]:
    """Plan every Feast ``StreamFeatureView``; ``join_keys`` maps entity name to join key (the registry's
    ``list_entities()``), since a view only names its entities."""
    plans = []
    for sfv in stream_feature_views:
        keys = [join_keys[name] for name in sfv.entities]
        if len(keys) != 1:
            raise PlanError(f"{sfv.name}: exactly one entity join key is supported, got {keys}")
        tagged = [(f.name, dict(f.tags or {})) for f in sfv.schema]
        source = sfv.stream_source
        time_column = source.timestamp_field if source is not None else "event_time"
        delay = _ms(getattr(source, "watermark_delay_threshold", None))
        plans.append(
            compile_view(sfv.name, keys[0], sfv.aggregations, tagged, time_column=time_column, watermark_delay_ms=delay)
        )
    return sorted(plans, key=lambda p: p.name)
