"""`streamscore top` without a Prometheus: the renderer on fixed snapshots, and the error when none answers.

The numbers read from a real Prometheus are checked in ``test_prometheus_views.py``.
"""

from __future__ import annotations

import inspect
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console, RenderableType

from streamscore.errors import StreamscoreError
from streamscore.monitoring import report, top
from streamscore.monitoring.prom import Prometheus, PrometheusUnavailable
from streamscore.monitoring.render import save_png, to_image
from streamscore.monitoring.top import DriftFlag, Quantiles, Snapshot, Worker, render, run_top, take_snapshot
from streamscore.settings import Settings
from tests.conftest import free_port

NOW = datetime(2025, 6, 1, 12, 0, 3, tzinfo=UTC)


def busy_snapshot() -> Snapshot:
    return Snapshot(
        taken_at=NOW,
        source="http://127.0.0.1:9090",
        targets={"features": (1, 1), "inference": (2, 2), "retrain": (1, 1)},
        requests_per_s={"scored": 1234.5, "dead-letter": 0.04},
        events_per_s={"features-ingest": 1240.0},
        dead_letters_per_s={"inference: undecodable": 0.04},
        inference_lag=42,
        features_lag={"transactions": 1200},
        latency_ms={
            "queue": Quantiles(1.2, 4.8),
            "features": Quantiles(0.9, 3.1),
            "inference": Quantiles(0.4, 1.5),
            "total": Quantiles(3.4, 12.0),
        },
        freshness_s={"features-ingest": Quantiles(0.012, 0.08)},
        feature_age_s=Quantiles(0.6, 14.0),
        drift_monitored=24,
        drifted=[DriftFlag("amount_mean_1h", "psi", 0.41), DriftFlag("amount", "wasserstein", 0.33)],
        detections={"score": 2},
        workers=[Worker("127.0.0.1:9301", "4411", "fraud", "3"), Worker("127.0.0.1:9302", "4412", "fraud", "2")],
        retrain_streak=2,
        retrain_after=3,
        last_decision=("promoted", NOW - timedelta(minutes=7)),
        decisions={"triggered": 2, "promoted": 1},
    )


def text_of(renderable: RenderableType, width: int = 120) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_render_shows_every_section() -> None:
    text = text_of(render(busy_snapshot()))

    assert "1,234.5/s" in text  # scored requests
    assert re.search(r"inference: undecodable\s+0\.040/s", text)  # small rates keep their digits
    assert "1,240.0/s" in text  # feature events
    assert re.search(r"inference\s+42\b", text)
    assert re.search(r"transactions\s+1,200\b", text)
    assert re.search(r"total\s+3\.4\s+12\.0", text)
    assert re.search(r"queue\s+1\.2\s+4\.8", text)
    assert re.search(r"features-ingest\s+12ms\s+80ms", text)
    assert re.search(r"age\s+600ms\s+14\.0s", text)
    assert "2 of 24 input checks flagged" in text
    assert re.search(r"amount_mean_1h psi\s+0\.410", text)
    assert re.search(r"amount wasserstein\s+0\.330", text)
    assert re.search(r"score\s+2\b", text)  # detector firings
    assert re.search(r"pid 4411\s+fraud v3", text)
    assert re.search(r"pid 4412\s+fraud v2", text)  # a worker not yet on the new version stands out
    assert "2 / 3" in text
    assert re.search(r"promoted\s+7\.0min ago", text)
    assert "1 promoted · 2 triggered" in text
    assert "● features" in text
    assert "● inference 2/2" in text
    assert "no data" not in text


def test_render_says_which_service_is_missing() -> None:
    text = text_of(render(Snapshot(taken_at=NOW, targets={"features": (1, 1)})))

    assert "○ inference not running" in text
    assert "○ retrain not running" in text
    assert "no data (inference not running)" in text  # requests, lag, latency, drift, models
    assert "no data (retrain not running)" in text
    assert "no data yet" in text  # features is scraped but has not counted anything
    assert "no data (features not running)" not in text


def test_render_marks_a_target_that_fails_its_scrape() -> None:
    text = text_of(render(Snapshot(taken_at=NOW, targets={"inference": (1, 2), "features": (0, 1)})))

    assert "● inference 1/2" in text
    assert "● features down" in text


def test_render_keeps_the_last_snapshot_under_a_refresh_error() -> None:
    text = text_of(render(busy_snapshot(), error="cannot reach Prometheus at http://x:1: refused"))

    assert "refresh failed: cannot reach Prometheus at http://x:1: refused" in text
    assert "1,234.5/s" in text


def test_snapshot_json_is_plain() -> None:
    data = json.loads(busy_snapshot().to_json())

    assert data["requests_per_s"]["scored"] == 1234.5
    assert data["latency_ms"]["total"] == {"p50": 3.4, "p99": 12.0}
    assert data["drifted"][0] == {"feature": "amount_mean_1h", "statistic": "psi", "value": 0.41}
    assert data["last_decision"] == ["promoted", "2025-06-01T11:53:03+00:00"]


def test_png_draws_the_text_in_its_colours(tmp_path: Path) -> None:
    path = save_png(render(busy_snapshot()), tmp_path / "shots" / "top.png", width=100)

    with Image.open(path) as image:
        assert image.format == "PNG"
        rgb = image.convert("RGB")
        width, height = rgb.size
        colours = {colour for _, colour in rgb.getcolors(maxcolors=width * height) or []}
    assert 100 * 9 < width < 100 * 10 + 40  # 100 columns of DejaVu Sans Mono at 15 px, plus margins
    assert height > 20 * 18
    # The theme's red (flagged drift, dead letters) and green (services up) are drawn, not only grey text.
    assert any(r > 180 and g < 80 and b < 120 for r, g, b in colours)
    assert any(g > 150 and r < 180 and b < 100 for r, g, b in colours)


def test_png_of_an_empty_renderable_is_only_margin() -> None:
    image = to_image(render(Snapshot(taken_at=NOW)), width=60)

    assert image.size[0] < 60 * 10 + 40


def unreachable_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, monitoring={"prometheus_url": f"http://127.0.0.1:{free_port()}"})  # type: ignore[arg-type]


def test_unreachable_prometheus_is_one_line(tmp_path: Path) -> None:
    settings = unreachable_settings(tmp_path)

    with pytest.raises(PrometheusUnavailable) as caught:
        run_top(settings, once=True, console=Console(file=io.StringIO()))

    message = str(caught.value)
    assert isinstance(caught.value, StreamscoreError)
    assert "\n" not in message
    assert message.startswith(f"cannot reach Prometheus at {settings.monitoring.prometheus_url}: ")
    assert "`streamscore stack up` starts one" in message
    with Prometheus.from_settings(settings) as prom:
        assert prom.ready() is False
        with pytest.raises(PrometheusUnavailable):
            take_snapshot(prom, settings)


def test_refresh_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="refresh_s"):
        run_top(unreachable_settings(tmp_path), refresh_s=0)


def test_every_queried_metric_is_exported() -> None:
    """A metric renamed in a service must not leave `top` or `report` silently showing "no data"."""
    from prometheus_client import REGISTRY

    import streamscore.features.processor
    import streamscore.inference.reports
    import streamscore.inference.worker
    import streamscore.kafka.deadletter
    import streamscore.retrain.metrics  # noqa: F401

    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    exported = {
        family.name + suffix
        for family in REGISTRY.collect()
        for suffix in suffixes.get(family.type, ("",))
    }  # fmt: skip
    queried = set(re.findall(r"streamscore_[a-z_]+", inspect.getsource(top) + inspect.getsource(report)))

    assert len(queried) >= 15
    assert queried <= exported, sorted(queried - exported)
