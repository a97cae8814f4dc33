"""`streamscore report`: one self-contained HTML file of how the pipeline ran over a time range.

Three steps, each testable alone: :func:`fetch` reads every time series from Prometheus (and the retrain
decisions from MLflow, :mod:`streamscore.retrain.history`) into a plain :class:`ReportData` on one time grid;
:func:`figure` draws it as one matplotlib figure whose panels share the time axis, so a drift episode, the
retrain it triggered and the version change that followed line up vertically; :func:`page` wraps the figure
(a base64 PNG) and the table of decisions in HTML. :func:`build_report` runs the three and also writes the
figure as a PNG next to the page.

Rates use Grafana's ``$__rate_interval`` rule, ``max(step + scrape, 4 * scrape)``: a window shorter than the
step would skip samples between points, one shorter than four scrapes would often hold a single sample.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.typing import NDArray

from streamscore.errors import StreamscoreError
from streamscore.monitoring.prom import Prometheus, Series, duration
from streamscore.retrain.history import Decision, decisions
from streamscore.settings import Settings

__all__ = [
    "ReportData",
    "ReportError",
    "build_report",
    "fetch",
    "figure",
    "figure_path",
    "page",
    "png_bytes",
    "resolve_range",
]

log = logging.getLogger(__name__)

DEFAULT_SPAN = timedelta(hours=1)
POINTS = 400  # per series: finer than a figure's pixels per panel would show
LineStyle = Literal["-", "--", ":"]
_DECISION_STYLE: dict[str, tuple[str, LineStyle]] = {  # colour and style of the line marking each kind of step
    "triggered": ("tab:orange", "--"),
    "promoted": ("tab:green", "-"),
    "rejected": ("tab:gray", "--"),
    "failed": ("tab:red", ":"),
}


class ReportError(StreamscoreError):
    """The report cannot be made as asked (an empty or reversed time range, an unreadable duration)."""


@dataclass(frozen=True)
class ReportData:
    """Every series of the report on one time grid (``times``); a missing point is NaN."""

    source: str
    start: datetime
    end: datetime
    times: list[datetime]
    throughput: dict[str, list[float]] = field(default_factory=dict)  # per second
    latency_ms: dict[str, list[float]] = field(default_factory=dict)  # "total p99", ...
    freshness_s: dict[str, list[float]] = field(default_factory=dict)
    drift: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # statistic -> feature -> values
    drifted: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # same keys; 1 where flagged
    models: dict[str, list[float]] = field(default_factory=dict)  # "model vN" -> workers serving it
    thresholds: dict[str, float] = field(default_factory=dict)  # statistic -> drift threshold
    decisions: list[Decision] = field(default_factory=list)
    decisions_error: str | None = None  # why the decisions could not be read, if so


# -- time range -----------------------------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def resolve_range(
    span: tuple[datetime, datetime] | None, start: datetime | None, end: datetime | None, *, now: datetime
) -> tuple[datetime, datetime]:
    """The report's range: as given (naive times are UTC), else the last hour trimmed to the data Prometheus has.

    ``span`` is Prometheus's oldest and newest sample (:meth:`Prometheus.data_span`). With no data in the last
    hour the default becomes the last hour of data instead, so a report of yesterday's demo still shows it.
    """
    end = _utc(end) if end is not None else None
    start = _utc(start) if start is not None else None
    if end is None:
        end = now
        if start is None and span is not None and span[1] < now - DEFAULT_SPAN:
            end = span[1]
    if start is None:
        start = end - DEFAULT_SPAN
        if span is not None and span[0] > start and span[0] < end:
            start = span[0]
    if start >= end:
        raise ReportError(f"the report's start ({start:%Y-%m-%d %H:%M:%S}) is not before its end ({end:%H:%M:%S})")
    return start, end


# -- Prometheus -> ReportData ---------------------------------------------------------------------------------


class _Labels(dict[str, str]):
    """Labels for ``str.format_map``: a label a series lacks reads as empty, not as a KeyError."""

    def __missing__(self, key: str) -> str:
        return ""


def _grid(series: Series, start: datetime, step: timedelta, points: int) -> list[float]:
    """The series' values on the report's grid; Prometheus omits points without data, those become NaN."""
    out = [math.nan] * points
    for t, v in zip(series.times, series.values, strict=True):
        i = round((t - start) / step)
        if 0 <= i < points:
            out[i] = v
    return out


def fetch(prom: Prometheus, settings: Settings, start: datetime, end: datetime) -> ReportData:
    """Every series and decision of the report between ``start`` and ``end``."""
    scrape = settings.monitoring.scrape_interval_s
    # Whole milliseconds, as the API takes them: the grid here and Prometheus's evaluation times then agree.
    start = start.replace(microsecond=start.microsecond // 1000 * 1000)
    step = timedelta(milliseconds=round(1000 * max(scrape, (end - start).total_seconds() / POINTS)))
    window = duration(max(step.total_seconds() + scrape, 4 * scrape))
    times = [start + i * step for i in range(int((end - start) / step) + 1)]

    def grid(series: Series) -> list[float]:
        return _grid(series, start, step, len(times))

    def query(promql: str, name: str) -> dict[str, list[float]]:
        return {name.format_map(_Labels(s.labels)): grid(s) for s in prom.range_(promql, start, end, step)}

    def quantiles(buckets: str, by: str, name: str) -> dict[str, list[float]]:
        grouping = f"{by}, le" if by else "le"
        out: dict[str, list[float]] = {}
        for q, tag in ((0.5, "p50"), (0.99, "p99")):
            promql = f"histogram_quantile({q}, sum by ({grouping}) (rate({buckets}[{window}])))"
            out |= query(promql, f"{name} {tag}")
        return out

    throughput = query(f"sum by (outcome) (rate(streamscore_inference_requests_total[{window}]))", "requests {outcome}")
    throughput |= query(f"sum by (stage) (rate(streamscore_features_events_in_total[{window}]))", "events {stage}")
    throughput |= query(f"sum(rate(streamscore_dead_letters_total[{window}]))", "dead letters")
    freshness = quantiles("streamscore_features_freshness_seconds_bucket", "stage", "event→online {stage}")
    freshness |= quantiles("streamscore_inference_feature_freshness_seconds_bucket", "", "oldest feature used")

    drift: dict[str, dict[str, list[float]]] = {}
    for s in prom.range_("max by (feature, statistic) (streamscore_drift_statistic)", start, end, step):
        drift.setdefault(s.labels.get("statistic", ""), {})[s.labels.get("feature", "")] = grid(s)
    drifted: dict[str, dict[str, list[float]]] = {}
    for s in prom.range_("max by (feature, statistic) (streamscore_drift_drifted)", start, end, step):
        drifted.setdefault(s.labels.get("statistic", ""), {})[s.labels.get("feature", "")] = grid(s)

    try:
        steps, error = decisions(settings, start, end), None
    except StreamscoreError as exc:  # MLflow unreadable: the Prometheus half of the report still stands
        log.warning("retrain decisions left out of the report: %s", exc)
        steps, error = [], str(exc)

    drift_settings = settings.drift
    return ReportData(
        source=prom.url,
        start=start,
        end=end,
        times=times,
        throughput=throughput,
        latency_ms=quantiles("streamscore_inference_latency_ms_bucket", "phase", "{phase}"),
        freshness_s=freshness,
        drift=drift,
        drifted=drifted,
        models=query("count by (model, version) (streamscore_inference_model_info == 1)", "{model} v{version}"),
        thresholds={
            "psi": drift_settings.psi_threshold,
            "wasserstein": drift_settings.wasserstein_threshold,
            "missing_rate": drift_settings.missing_threshold,
        },
        decisions=steps,
        decisions_error=error,
    )


# -- ReportData -> figure -------------------------------------------------------------------------------------

Days = NDArray[np.float64]


def _days(times: list[datetime]) -> Days:
    """Times as matplotlib's date numbers: plain floats keep every plotting call typed (and tz-proof)."""
    return np.asarray(mdates.date2num(times), dtype=np.float64)  # type: ignore[no-untyped-call]


def _has_data(values: list[float]) -> bool:
    return any(math.isfinite(v) for v in values)


def _lines(ax: Axes, x: Days, series: dict[str, list[float]], *, width: float = 1.2, alpha: float = 1.0) -> int:
    drawn = 0
    for name, values in sorted(series.items()):
        if _has_data(values):
            ax.plot(x, values, label=name, linewidth=width, alpha=alpha)
            drawn += 1
    return drawn


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")


def _legend(ax: Axes) -> None:
    """Outside the plot, right; long ones (a drift panel's features) in columns of twelve."""
    handles = ax.get_legend_handles_labels()[0]
    if handles:
        ncol = max(1, math.ceil(len(handles) / 12))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, ncol=ncol)


def _latency(ax: Axes, x: Days, data: ReportData) -> None:
    totals = {k: v for k, v in data.latency_ms.items() if k.startswith("total ")}
    phases = {k: v for k, v in data.latency_ms.items() if k.endswith(" p99") and not k.startswith("total ")}
    if not _lines(ax, x, totals, width=1.8) + _lines(ax, x, phases, width=0.8, alpha=0.7):
        _no_data(ax)
    ax.set_ylabel("latency (ms)")


def _freshness(ax: Axes, x: Days, data: ReportData) -> None:
    ax.set_ylabel("freshness (s)")
    if not _lines(ax, x, data.freshness_s):
        _no_data(ax)
    # Processor freshness is milliseconds, a feature's age can be hours: only a log axis shows both.
    elif any(v > 0 for values in data.freshness_s.values() for v in values if math.isfinite(v)):
        ax.set_yscale("log")


def _models(ax: Axes, x: Days, data: ReportData) -> None:
    """Which versions were served when: one bar per version, where at least one worker reported serving it."""
    ax.set_ylabel("served")
    served = {name: values for name, values in sorted(data.models.items()) if any(v > 0 for v in values)}
    if not served:
        _no_data(ax)
        ax.set_yticks([])
        return
    width = float(x[1] - x[0]) if len(x) > 1 else 1 / 86400
    for row, values in enumerate(served.values()):
        spans = [(float(t), width) for t, v in zip(x, values, strict=True) if v > 0]
        ax.broken_barh(spans, (row - 0.35, 0.7), color=f"C{row}")
    ax.set_yticks(range(len(served)), list(served))
    ax.set_ylim(-0.6, len(served) - 0.4)


def _drift(ax: Axes, x: Days, data: ReportData, statistic: str) -> None:
    """One line per input, red crosses where a report flagged it, the threshold dotted."""
    ax.set_ylabel(f"drift: {statistic}")
    flags = data.drifted.get(statistic, {})
    for i, (feature, ys) in enumerate(sorted(data.drift.get(statistic, {}).items())):
        if not _has_data(ys):
            continue
        ax.plot(x, ys, label=feature, linewidth=1, color=f"C{i % 10}")
        hit = [f == 1 for f in flags.get(feature, [0.0] * len(ys))]
        if any(hit):
            label = None if ax.collections else "drifted"
            ax.scatter(x[hit], np.asarray(ys)[hit], marker="x", s=28, color="red", zorder=3, label=label)
    if not ax.lines:
        _no_data(ax)
    elif statistic in data.thresholds:
        ax.axhline(data.thresholds[statistic], color="black", linestyle=":", linewidth=1, label="threshold")


def figure(data: ReportData) -> Figure:
    """The report's one figure: throughput, latency, freshness, versions served, then drift per statistic."""
    statistics = sorted(data.drift) or ["statistic"]
    rows = 4 + len(statistics)
    fig = Figure(figsize=(12, 2.1 * rows), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, explicitly: no pyplot, no GUI backend, safe off the main thread
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(f"streamscore, {data.start:%Y-%m-%d %H:%M:%S} to {data.end:%Y-%m-%d %H:%M:%S} UTC", fontsize=12)
    x = _days(data.times)

    axes[0].set_ylabel("per second")
    if not _lines(axes[0], x, data.throughput):
        _no_data(axes[0])
    _latency(axes[1], x, data)
    _freshness(axes[2], x, data)
    _models(axes[3], x, data)
    for ax, statistic in zip(axes[4:], statistics, strict=True):
        _drift(ax, x, data, statistic)

    moments = _days([step.time for step in data.decisions])
    for ax in axes:
        for step, at in zip(data.decisions, moments, strict=True):
            colour, style = _DECISION_STYLE.get(step.kind, ("black", "-"))
            ax.axvline(float(at), color=colour, linestyle=style, linewidth=1.2, alpha=0.9)
        ax.grid(True, alpha=0.3)
        _legend(ax)
    for step, at in zip(data.decisions, moments, strict=True):  # named once, along the top panel's line
        label = step.kind if step.version is None else f"{step.kind} v{step.version}"
        colour = _DECISION_STYLE.get(step.kind, ("black", "-"))[0]
        axes[0].text(
            float(at), 0.98, f" {label}", transform=axes[0].get_xaxis_transform(), rotation=90, va="top",
            ha="right", fontsize=7, color=colour, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
        )  # fmt: skip
    start, end = _days([data.start, data.end])
    axes[-1].set_xlim(float(start), float(end))
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    axes[-1].xaxis.set_major_locator(locator)  # the axes share their x ticker: one locator serves all
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    axes[-1].set_xlabel("time (UTC)")
    kinds = [k for k in _DECISION_STYLE if any(step.kind == k for step in data.decisions)]
    if kinds:
        handles = [Line2D([], [], color=_DECISION_STYLE[k][0], linestyle=_DECISION_STYLE[k][1]) for k in kinds]
        fig.legend(handles, kinds, loc="outside lower center", ncol=len(kinds), fontsize=9, frameon=False)
    return fig


def png_bytes(fig: Figure, *, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# -- page -----------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.meta { color: #666; } img { max-width: 100%; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.9em; text-align: left; }
td.triggered { color: #d62; } td.promoted { color: #2a2; } td.rejected { color: #777; } td.failed { color: #c22; }
"""


def _decision_table(data: ReportData) -> str:
    if data.decisions_error:
        return f"<p class='meta'>Retrain decisions unavailable: {html.escape(data.decisions_error)}</p>"
    if not data.decisions:
        return "<p class='meta'>No retrain decisions in this range.</p>"
    rows = "".join(
        f"<tr><td>{d.time:%Y-%m-%d %H:%M:%S}</td><td class='{html.escape(d.kind)}'>{html.escape(d.kind)}</td>"
        f"<td>{'' if d.version is None else d.version}</td><td>{html.escape(d.detail)}</td></tr>"
        for d in sorted(data.decisions, key=lambda d: d.time)
    )
    return (
        "<table><thead><tr><th>time (UTC)</th><th>decision</th><th>version</th><th>detail</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def page(data: ReportData, png: bytes) -> str:
    """The report as one HTML document; the figure is inlined, so the file can be mailed or archived alone."""
    flagged = sorted(
        {f"{feature} ({stat})" for stat, by in data.drifted.items() for feature, v in by.items() if 1 in v}
    )
    summary = ", ".join(html.escape(f) for f in flagged) if flagged else "none"
    encoded = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>streamscore report {data.start:%Y-%m-%d %H:%M}</title>
<style>{_CSS}</style></head><body>
<h1>streamscore report</h1>
<p class="meta">{data.start:%Y-%m-%d %H:%M:%S} to {data.end:%Y-%m-%d %H:%M:%S} UTC · from {html.escape(data.source)}
 · generated {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC</p>
<h2>Pipeline over time</h2>
<p class="meta">Vertical lines: retrain decisions (orange triggered, green promoted, grey rejected, red failed).
Red crosses: drift reports that flagged the input; dotted lines: drift thresholds.</p>
<img alt="throughput, latency, freshness, versions served and drift over time" src="data:image/png;base64,{encoded}">
<h2>Inputs flagged as drifted</h2>
<p>{summary}</p>
<h2>Retrain decisions</h2>
{_decision_table(data)}
</body></html>
"""


def figure_path(out: Path) -> Path:
    """Where the figure's PNG goes: beside the page, same name (``report.html`` → ``report.png``)."""
    return out.with_suffix(".png") if out.suffix.lower() in (".html", ".htm") else out.with_name(out.name + ".png")


def build_report(settings: Settings, out: Path, start: datetime | None = None, end: datetime | None = None) -> Path:
    """Write the HTML report to ``out`` (and its figure to :func:`figure_path`); returns ``out``.

    The default range is the last hour, trimmed to the data Prometheus holds (:func:`resolve_range`).
    """
    with Prometheus.from_settings(settings, timeout_s=30.0) as prom:
        span = prom.data_span() if start is None or end is None else None
        start, end = resolve_range(span, start, end, now=datetime.now(UTC))
        data = fetch(prom, settings, start, end)
    png = png_bytes(figure(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure_path(out).write_bytes(png)
    out.write_text(page(data, png), encoding="utf-8")
    return out
