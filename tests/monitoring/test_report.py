"""`streamscore report` without a Prometheus: the figure and page from fixed series, the time range rules,
and the error when none answers. ``test_prometheus_views.py`` builds a report from a real one."""

from __future__ import annotations

import base64
import io
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from streamscore.monitoring.prom import PrometheusUnavailable
from streamscore.monitoring.report import (
    ReportData,
    ReportError,
    build_report,
    figure,
    figure_path,
    page,
    png_bytes,
    resolve_range,
)
from streamscore.retrain.history import Decision
from streamscore.settings import Settings
from tests.conftest import free_port

START = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
NAN = math.nan


def sample_data(**changes: object) -> ReportData:
    times = [START + timedelta(seconds=10 * i) for i in range(60)]
    n = len(times)
    psi = [0.05] * 40 + [0.35] * 20
    base: dict[str, object] = {
        "source": "http://127.0.0.1:9090",
        "start": START,
        "end": times[-1],
        "times": times,
        "throughput": {"requests scored": [1000.0] * n, "events features-ingest": [NAN] * 5 + [990.0] * (n - 5)},
        "latency_ms": {"total p50": [3.0] * n, "total p99": [12.0] * n, "queue p99": [4.0] * n},
        "freshness_s": {"event→online features-ingest p99": [0.05] * n, "oldest feature used p99": [30.0] * n},
        "drift": {"psi": {"amount": psi, "hour": [0.02] * n}, "wasserstein": {"amount": [0.1] * n}},
        "drifted": {"psi": {"amount": [0.0] * 40 + [1.0] * 20, "hour": [0.0] * n}},
        "models": {"fraud v2": [2.0] * 45 + [0.0] * 15, "fraud v3": [0.0] * 45 + [2.0] * 15},
        "thresholds": {"psi": 0.2, "wasserstein": 0.25},
        "decisions": [
            Decision(times[42], "triggered", None, "3 drifted reports"),
            Decision(times[44], "promoted", 3, "auc 0.91 > 0.89 <gate>"),
        ],
    }
    base.update(changes)
    return ReportData(**base)  # type: ignore[arg-type]


def embedded_png(html: str) -> bytes:
    found = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(found) == 1
    return base64.b64decode(found[0])


def test_figure_has_a_panel_per_view_and_per_drift_statistic() -> None:
    fig = figure(sample_data())

    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == [
        "per second", "latency (ms)", "freshness (s)", "served", "drift: psi", "drift: wasserstein",
    ]  # fmt: skip
    by_label = {ax.get_ylabel(): ax for ax in fig.axes}
    psi = by_label["drift: psi"]
    assert {line.get_label() for line in psi.lines} >= {"amount", "hour", "threshold"}
    threshold = next(line for line in psi.lines if line.get_label() == "threshold")
    assert list(threshold.get_ydata()) == [0.2, 0.2]
    drifted = [c for c in psi.collections if c.get_label() == "drifted"]
    assert len(drifted) == 1
    assert len(drifted[0].get_offsets()) == 20  # one cross per flagged point of "amount", none for "hour"
    assert by_label["freshness (s)"].get_yscale() == "log"
    assert [t.get_text() for t in by_label["served"].get_yticklabels()] == ["fraud v2", "fraud v3"]
    # Every time panel carries both decisions as vertical lines (x constant along the line).
    for ax in fig.axes:
        verticals = [line for line in ax.lines if len(set(line.get_xdata())) == 1 and line.get_label().startswith("_")]
        assert len(verticals) == 2, ax.get_ylabel()
    texts = [t.get_text().strip() for t in fig.axes[0].texts]
    assert texts == ["triggered", "promoted v3"]


def test_page_embeds_the_figure_and_lists_the_decisions() -> None:
    data = sample_data()
    png = png_bytes(figure(data))
    html = page(data, png)

    assert embedded_png(html) == png
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert image.size[0] >= 1000
    assert "2025-06-01 12:07:00</td><td class='triggered'>triggered</td><td></td><td>3 drifted reports</td>" in html
    assert "<td class='promoted'>promoted</td><td>3</td><td>auc 0.91 &gt; 0.89 &lt;gate&gt;</td>" in html
    assert "<p>amount (psi)</p>" in html  # flagged inputs; "hour" never was
    assert "2025-06-01 12:00:00 to 2025-06-01 12:09:50 UTC" in html
    assert "http://127.0.0.1:9090" in html


def test_page_without_data_or_decisions_says_so() -> None:
    data = ReportData(source="http://p:9090", start=START, end=START + timedelta(minutes=5), times=[START])
    fig = figure(data)  # warnings are errors here: an empty panel must not raise any
    html = page(data, png_bytes(fig))

    assert [ax.texts[0].get_text() for ax in fig.axes] == ["no data"] * 5
    assert "No retrain decisions in this range." in html
    assert "<p>none</p>" in html


def test_page_says_why_decisions_are_missing() -> None:
    data = sample_data(decisions=[], decisions_error="cannot search runs (MLflow at sqlite:///x): locked")
    html = page(data, png_bytes(figure(data)))

    assert "Retrain decisions unavailable: cannot search runs (MLflow at sqlite:///x): locked" in html


def test_default_range_is_the_last_hour_trimmed_to_the_data() -> None:
    now = START + timedelta(hours=5)
    assert resolve_range(None, None, None, now=now) == (now - timedelta(hours=1), now)
    young = (now - timedelta(minutes=10), now - timedelta(seconds=2))
    assert resolve_range(young, None, None, now=now) == (young[0], now)
    old = (now - timedelta(days=2), now - timedelta(days=1))
    assert resolve_range(old, None, None, now=now) == (old[1] - timedelta(hours=1), old[1])
    short_and_old = (now - timedelta(days=1, minutes=5), now - timedelta(days=1))
    assert resolve_range(short_and_old, None, None, now=now) == short_and_old


def test_explicit_range_wins_and_naive_times_are_utc() -> None:
    now = START + timedelta(hours=5)
    span = (now - timedelta(minutes=10), now)
    naive = datetime(2025, 6, 1, 13, 0)
    assert resolve_range(span, naive, None, now=now) == (naive.replace(tzinfo=UTC), now)
    assert resolve_range(span, None, now - timedelta(minutes=1), now=now) == (span[0], now - timedelta(minutes=1))
    with pytest.raises(ReportError, match="is not before its end"):
        resolve_range(span, now, now - timedelta(minutes=1), now=now)


def test_figure_goes_beside_the_page() -> None:
    assert figure_path(Path("out/report.html")) == Path("out/report.png")
    assert figure_path(Path("out/report")) == Path("out/report.png")
    assert figure_path(Path("out/report.v2")) == Path("out/report.v2.png")


def test_unreachable_prometheus_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    settings = Settings(data_dir=tmp_path, monitoring={"prometheus_url": url})  # type: ignore[arg-type]

    with pytest.raises(PrometheusUnavailable) as caught:
        build_report(settings, tmp_path / "report.html")

    assert str(caught.value).startswith(f"cannot reach Prometheus at {url}: ")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "report.html").exists()
