"""`streamscore top`: the pipeline's vital signs on one terminal screen, read from Prometheus.

Two halves, so the view is testable without a server: :func:`take_snapshot` asks Prometheus a fixed set of
queries and returns a plain :class:`Snapshot`; :func:`render` turns a snapshot into a rich renderable and does
nothing else. :func:`run_top` loops the two under ``rich.live.Live``.

Every query aggregates with ``sum``/``max by`` over the labels that matter, so N inference workers read as
one pipeline; the scrape labels ``service``/``pid``/``instance`` only serve to say which services are up and
which worker serves which model. Rates use a window of four scrape intervals (:func:`rate_window_s`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from streamscore.monitoring.prom import Prometheus, PrometheusError, Sample, duration
from streamscore.settings import Settings

__all__ = ["DriftFlag", "Quantiles", "Snapshot", "Worker", "rate_window_s", "render", "run_top", "take_snapshot"]

SERVICES = ("features", "inference", "retrain")
PHASES = ("queue", "features", "inference", "total")
_NONE = "-"  # a quantile or value with nothing behind it


@dataclass(frozen=True)
class Quantiles:
    """p50 and p99 of a histogram over the rate window; None where the window saw no observation."""

    p50: float | None = None
    p99: float | None = None


@dataclass(frozen=True, order=True)
class DriftFlag:
    """An input (or the score) and statistic the latest drift report flagged, with the statistic's value."""

    feature: str
    statistic: str
    value: float | None


@dataclass(frozen=True, order=True)
class Worker:
    """An inference worker (one scrape target) and the model version it serves."""

    instance: str
    pid: str
    model: str
    version: str


@dataclass(frozen=True)
class Snapshot:
    """Everything `top` shows, as plain values: built from Prometheus, or by hand in a test."""

    taken_at: datetime
    source: str = ""  # the Prometheus URL
    window_s: float = 20.0
    targets: dict[str, tuple[int, int]] = field(default_factory=dict)  # service -> (up, scraped)
    requests_per_s: dict[str, float] = field(default_factory=dict)  # outcome
    events_per_s: dict[str, float] = field(default_factory=dict)  # processor stage
    dead_letters_per_s: dict[str, float] = field(default_factory=dict)  # "stage: reason"
    inference_lag: float | None = None
    features_lag: dict[str, float] = field(default_factory=dict)  # topic
    latency_ms: dict[str, Quantiles] = field(default_factory=dict)  # phase
    freshness_s: dict[str, Quantiles] = field(default_factory=dict)  # processor stage
    feature_age_s: Quantiles = Quantiles()
    drift_monitored: int = 0  # (input, statistic) pairs reported
    drifted: list[DriftFlag] = field(default_factory=list)
    detections: dict[str, float] = field(default_factory=dict)  # detector stream -> firings since start
    workers: list[Worker] = field(default_factory=list)
    retrain_streak: float | None = None
    retrain_after: int = 3  # reports in a row that trigger a retrain
    last_decision: tuple[str, datetime] | None = None
    decisions: dict[str, float] = field(default_factory=dict)  # decision -> count since the retrainer started

    def to_json(self) -> str:
        """The snapshot for scripts (`top --once --json`)."""

        def plain(value: Any) -> Any:
            return value.isoformat() if isinstance(value, datetime) else str(value)

        return json.dumps(asdict(self), default=plain, indent=2)


# -- Prometheus -> Snapshot -----------------------------------------------------------------------------------


def rate_window_s(settings: Settings) -> float:
    """Four scrapes: ``rate`` divides by the whole window, so it reads low until a series is that old, and a
    window of fewer scrapes may hold one sample (no rate at all). 20 s at the default 5 s scrape interval."""
    return 4 * settings.monitoring.scrape_interval_s


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _by(samples: Iterable[Sample], *labels: str) -> dict[str, float]:
    """Samples keyed by their labels' values joined with ": "; NaN (no traffic in the window) dropped."""
    out: dict[str, float] = {}
    for sample in samples:
        if math.isfinite(sample.value):
            out[": ".join(sample.labels.get(label, "") for label in labels)] = sample.value
    return out


def _scalar(samples: list[Sample]) -> float | None:
    return _finite(samples[0].value) if samples else None


def _quantiles(prom: Prometheus, buckets: str, by: str, window: str) -> dict[str, Quantiles]:
    grouping = f"{by}, le" if by else "le"
    found: dict[str, dict[float, float]] = {}
    for q in (0.5, 0.99):
        for sample in prom.instant(f"histogram_quantile({q}, sum by ({grouping}) (rate({buckets}[{window}])))"):
            if math.isfinite(sample.value):
                found.setdefault(sample.labels.get(by, ""), {})[q] = sample.value
    return {key: Quantiles(v.get(0.5), v.get(0.99)) for key, v in found.items()}


def take_snapshot(prom: Prometheus, settings: Settings) -> Snapshot:
    """One round of queries; raises :class:`PrometheusError` when Prometheus cannot answer."""
    now = datetime.now(UTC)
    window_s = rate_window_s(settings)
    w = duration(window_s)

    targets: dict[str, tuple[int, int]] = {}
    for sample in prom.instant('up{service!=""}'):
        service = sample.labels["service"]
        up, scraped = targets.get(service, (0, 0))
        targets[service] = (up + int(sample.value == 1), scraped + 1)

    flags = prom.instant("max by (feature, statistic) (streamscore_drift_drifted)")
    values = {
        (s.labels.get("feature", ""), s.labels.get("statistic", "")): _finite(s.value)
        for s in prom.instant("max by (feature, statistic) (streamscore_drift_statistic)")
    }
    drifted = sorted(
        DriftFlag(f, st, values.get((f, st)))
        for f, st in ((s.labels.get("feature", ""), s.labels.get("statistic", "")) for s in flags if s.value == 1)
    )

    last = prom.instant("streamscore_retrain_last_decision_timestamp_seconds > 0")
    newest = max(last, key=lambda s: s.value, default=None)

    return Snapshot(
        taken_at=now,
        source=prom.url,
        window_s=window_s,
        targets=targets,
        requests_per_s=_by(
            prom.instant(f"sum by (outcome) (rate(streamscore_inference_requests_total[{w}]))"), "outcome"
        ),
        events_per_s=_by(prom.instant(f"sum by (stage) (rate(streamscore_features_events_in_total[{w}]))"), "stage"),
        dead_letters_per_s=_by(
            prom.instant(f"sum by (stage, reason) (rate(streamscore_dead_letters_total[{w}]))"), "stage", "reason"
        ),
        inference_lag=_scalar(prom.instant("sum(streamscore_inference_consumer_lag)")),
        features_lag=_by(prom.instant("sum by (topic) (streamscore_features_consumer_lag)"), "topic"),
        latency_ms=_quantiles(prom, "streamscore_inference_latency_ms_bucket", "phase", w),
        freshness_s=_quantiles(prom, "streamscore_features_freshness_seconds_bucket", "stage", w),
        feature_age_s=_quantiles(prom, "streamscore_inference_feature_freshness_seconds_bucket", "", w).get(
            "", Quantiles()
        ),
        drift_monitored=len(flags),
        drifted=drifted,
        detections=_by(prom.instant("sum by (stream) (streamscore_drift_detections_total)"), "stream"),
        workers=sorted(
            Worker(s.labels.get("instance", ""), s.labels.get("pid", ""), s.labels["model"], s.labels["version"])
            for s in prom.instant("streamscore_inference_model_info == 1")
        ),
        retrain_streak=_scalar(prom.instant("max(streamscore_retrain_drift_streak)")),
        retrain_after=settings.retrain.min_reports,
        last_decision=None if newest is None else (newest.labels.get("decision", "?"), _at(newest.value)),
        decisions=_by(prom.instant("sum by (decision) (streamscore_retrain_decisions_total)"), "decision"),
    )


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


# -- Snapshot -> renderable -----------------------------------------------------------------------------------


def _rate(value: float) -> str:
    return f"{value:,.1f}/s" if value >= 0.1 or value == 0 else f"{value:.3f}/s"


def _seconds(value: float | None) -> str:
    """A duration in the unit a person reads fastest: 850ms, 4.2s, 3.5min, 2.0h."""
    if value is None:
        return _NONE
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}min"
    return f"{value / 3600:.1f}h"


def _ms(value: float | None) -> str:
    return _NONE if value is None else f"{value:,.1f}"


def _absent(snapshot: Snapshot, service: str) -> Text:
    """A "no data" cell, saying why when the service that exports the numbers is not being scraped."""
    if snapshot.targets.get(service, (0, 0))[0] == 0:
        return Text(f"no data ({service} not running)", style="dim")
    return Text("no data yet", style="dim")


Cell = str | Text


class _Rows:
    """A three-column listing (group, key, value) whose group name shows once, at its first row."""

    def __init__(self) -> None:
        self.table = Table.grid(padding=(0, 2))
        self.table.add_column(style="bold", no_wrap=True)
        self.table.add_column()
        self.table.add_column(justify="right")
        self._group: str | None = None

    def add(self, group: str, key: Cell, value: Cell) -> None:
        shown = group if group != self._group else ""
        self._group = group
        self.table.add_row(shown, key, value)

    def many(self, group: str, values: dict[str, Cell], empty: Cell) -> None:
        if not values:
            self.add(group, "", empty)
        for key, value in sorted(values.items()):
            self.add(group, key, value)


def _header(snapshot: Snapshot) -> Text:
    text = Text.assemble(("streamscore top", "bold"), f"  {snapshot.taken_at:%Y-%m-%d %H:%M:%S} UTC  ")
    text.append(f"{snapshot.source}  rates over {snapshot.window_s:g}s\n", style="dim")
    for service in SERVICES:
        up, scraped = snapshot.targets.get(service, (0, 0))
        if up:
            count = f" {up}/{scraped}" if scraped > 1 or up != scraped else ""
            text.append(f"● {service}{count}   ", style="green")
        elif scraped:
            text.append(f"● {service} down   ", style="red")
        else:
            text.append(f"○ {service} not running   ", style="dim")
    return text


def _throughput(s: Snapshot) -> RenderableType:
    rows = _Rows()
    rows.many("score requests", {k: _rate(v) for k, v in s.requests_per_s.items()}, _absent(s, "inference"))
    rows.many("feature events", {k: _rate(v) for k, v in s.events_per_s.items()}, _absent(s, "features"))
    rows.many(
        "dead letters",
        {k: Text(_rate(v), style="red" if v > 0 else "") for k, v in s.dead_letters_per_s.items()},
        Text("none", style="dim"),
    )
    return rows.table


def _lag(s: Snapshot) -> RenderableType:
    rows = _Rows()
    rows.add("inference", "", _absent(s, "inference") if s.inference_lag is None else f"{s.inference_lag:,.0f}")
    rows.many("features", {k: f"{v:,.0f}" for k, v in s.features_lag.items()}, _absent(s, "features"))
    return rows.table


def _quantile_table(title: str) -> Table:
    table = Table(box=None, padding=(0, 1), show_edge=False, pad_edge=False)
    table.add_column(title, style="bold", no_wrap=True)
    table.add_column("p50", justify="right")
    table.add_column("p99", justify="right")
    return table


def _latency(s: Snapshot) -> RenderableType:
    if not s.latency_ms:
        return _absent(s, "inference")
    table = _quantile_table("phase (ms)")
    for phase in [p for p in PHASES if p in s.latency_ms] + sorted(set(s.latency_ms) - set(PHASES)):
        q = s.latency_ms[phase]
        table.add_row(phase, _ms(q.p50), _ms(q.p99), style="bold" if phase == "total" else "")
    return table


def _freshness(s: Snapshot) -> RenderableType:
    table = _quantile_table("event → online store")
    for stage, q in sorted(s.freshness_s.items()):
        table.add_row(f"  {stage}", _seconds(q.p50), _seconds(q.p99))
    if not s.freshness_s:
        table.add_row(_absent(s, "features"))
    age = s.feature_age_s
    table.add_row(Text("oldest feature a prediction used", style="bold"))
    if age.p50 is None and age.p99 is None:
        table.add_row(_absent(s, "inference"))
    else:
        table.add_row("  age", _seconds(age.p50), _seconds(age.p99))
    return table


def _drift(s: Snapshot) -> RenderableType:
    if not s.drift_monitored and not s.detections:
        return _absent(s, "inference")
    if s.drifted:
        summary = Text(f"{len(s.drifted)} of {s.drift_monitored} input checks flagged", style="bold red")
    else:
        summary = Text(f"none of {s.drift_monitored} input checks flagged", style="green")
    rows = _Rows()
    for flag in s.drifted:
        value = _NONE if flag.value is None else f"{flag.value:.3f}"
        rows.add("flagged", f"{flag.feature} {flag.statistic}", Text(value, style="red"))
    rows.many("detector firings", {k: f"{v:,.0f}" for k, v in s.detections.items()}, Text("none", style="dim"))
    return Group(summary, rows.table)


def _models(s: Snapshot) -> RenderableType:
    rows = _Rows()
    if not s.workers:
        rows.add("serving", "", _absent(s, "inference"))
    for worker in s.workers:
        rows.add("serving", f"pid {worker.pid}" if worker.pid else worker.instance, f"{worker.model} v{worker.version}")
    if s.retrain_streak is None:
        rows.add("drift streak", "", _absent(s, "retrain"))
    else:
        near = s.retrain_streak >= max(1, s.retrain_after - 1)
        rows.add(
            "drift streak", "", Text(f"{s.retrain_streak:.0f} / {s.retrain_after}", style="yellow" if near else "")
        )
    if s.last_decision is not None:
        kind, when = s.last_decision
        style = {"promoted": "green", "rejected": "yellow", "failed": "red"}.get(kind, "")
        ago = _seconds(max(0.0, (s.taken_at - when).total_seconds()))
        rows.add("last decision", Text(kind, style=style), f"{ago} ago")
    if s.decisions:
        counts = " · ".join(f"{n:,.0f} {kind}" for kind, n in sorted(s.decisions.items()))
        rows.add("decisions", "", counts)
    return rows.table


def render(snapshot: Snapshot, *, error: str | None = None) -> RenderableType:
    """The whole screen for one snapshot; ``error`` (a failed refresh) is shown above the last good one."""
    grid = Table.grid(expand=True, padding=(0, 1))
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(Panel(_throughput(snapshot), title="throughput"), Panel(_lag(snapshot), title="consumer lag"))
    grid.add_row(
        Panel(_latency(snapshot), title="end-to-end latency"), Panel(_freshness(snapshot), title="feature freshness")
    )
    grid.add_row(Panel(_drift(snapshot), title="drift"), Panel(_models(snapshot), title="model & retrain"))
    head: list[RenderableType] = [_header(snapshot)]
    if error:
        head.append(Text(f"refresh failed: {error}", style="bold red"))
    return Group(*head, grid)


# -- the loop -------------------------------------------------------------------------------------------------


def run_top(
    settings: Settings,
    refresh_s: float = 2.0,
    once: bool = False,
    *,
    png: Path | None = None,
    as_json: bool = False,
    width: int = 110,
    console: Console | None = None,
) -> None:
    """Show the view until Ctrl-C, refreshed every ``refresh_s``; ``once`` (implied by ``png``/``as_json``)
    prints one snapshot and returns. The first query failing raises its one-line :class:`PrometheusError`;
    a later failure is shown above the last good snapshot while the loop keeps trying."""
    if refresh_s <= 0:
        raise ValueError(f"refresh_s must be > 0, got {refresh_s}")
    console = console or Console()
    with Prometheus.from_settings(settings) as prom:
        snapshot = take_snapshot(prom, settings)
        if as_json:
            console.print_json(snapshot.to_json())
            return
        if png is not None:
            from streamscore.monitoring.render import save_png

            save_png(render(snapshot), png, width=width)
            console.print(f"wrote {png}")
            return
        if once:
            console.print(render(snapshot))
            return
        with Live(render(snapshot), console=console, auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(refresh_s)
                    try:
                        snapshot = take_snapshot(prom, settings)
                        live.update(render(snapshot), refresh=True)
                    except PrometheusError as exc:
                        live.update(render(snapshot, error=str(exc)), refresh=True)
            except KeyboardInterrupt:
                return
