"""`top` and `report` against a real Prometheus scraping real exporters.

Prometheus is the stack's own (``PrometheusComponent``'s config and command line, file_sd discovery of target
files) scraping every second; the "services" are prometheus_client HTTP servers in this process, one per
service and two inference workers, each registered by a target file as ``serve_metrics`` writes them, with
counters that advance at known rates. MLflow (sqlite in the test's data dir) holds one real retrain run.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from rich.console import Console

from streamscore.exporter import target_path, targets_dir
from streamscore.monitoring.prom import BadQuery, Prometheus
from streamscore.monitoring.report import ReportData, build_report, fetch, figure_path, resolve_range
from streamscore.monitoring.top import DriftFlag, run_top, take_snapshot
from streamscore.retrain.history import KIND_TAG
from streamscore.settings import Settings
from streamscore.stack.components import PrometheusComponent
from tests.conftest import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus (make install)"),
]

SCORED_PER_S = 400.0  # per inference worker
EVENTS_PER_S = 300.0
DEAD_LETTERS_PER_S = 10.0


class Paced:
    """A counter child advanced to ``rate * elapsed``: its rate is exact however late a tick comes."""

    def __init__(self, child: Counter, rate: float) -> None:
        self.child, self.rate, self.done = child, rate, 0.0

    def __call__(self, elapsed: float) -> None:
        target = self.rate * elapsed
        self.child.inc(target - self.done)
        self.done = target


@dataclass
class FakeService:
    """One exporter: its own registry, served on a free port, advanced by :meth:`tick` from the clock."""

    name: str
    pid: str
    registry: CollectorRegistry
    tick: Callable[[float], None]


def inference_worker(pid: str, lag: int, *, old_version: bool) -> FakeService:
    reg = CollectorRegistry()
    requests = Counter("streamscore_inference_requests", "", ["outcome"], registry=reg)
    latency = Histogram(
        "streamscore_inference_latency_ms", "", ["phase"], registry=reg,
        buckets=(0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
    )  # fmt: skip
    age = Histogram(
        "streamscore_inference_feature_freshness_seconds", "", registry=reg,
        buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 3600, 86400),
    )  # fmt: skip
    Gauge("streamscore_inference_consumer_lag", "", ["partition"], registry=reg).labels(pid).set(lag)
    model = Gauge("streamscore_inference_model_info", "", ["model", "version"], registry=reg)
    if old_version:
        model.labels("fraud", "2").set(0)  # what a worker leaves behind after a swap
    model.labels("fraud", "3").set(1)
    statistic = Gauge("streamscore_drift_statistic", "", ["feature", "statistic"], registry=reg)
    drifted = Gauge("streamscore_drift_drifted", "", ["feature", "statistic"], registry=reg)
    statistic.labels("amount", "psi").set(0.41)
    drifted.labels("amount", "psi").set(1)
    statistic.labels("hour", "psi").set(0.05)
    drifted.labels("hour", "psi").set(0)
    Counter("streamscore_drift_detections", "", ["stream"], registry=reg).labels("score").inc(1)

    scored = Paced(requests.labels("scored"), SCORED_PER_S)

    def tick(elapsed: float) -> None:
        scored(elapsed)
        for phase, ms in (("queue", 1.5), ("features", 3.0), ("inference", 0.8), ("total", 7.0)):
            latency.labels(phase).observe(ms)
        age.observe(0.7)

    return FakeService("inference", pid, reg, tick)


def features_processor() -> FakeService:
    reg = CollectorRegistry()
    events = Counter("streamscore_features_events_in", "", ["stage"], registry=reg)
    freshness = Histogram(
        "streamscore_features_freshness_seconds", "", ["stage"], registry=reg,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    )  # fmt: skip
    dead = Counter("streamscore_dead_letters", "", ["stage", "reason"], registry=reg)
    Gauge("streamscore_features_consumer_lag", "", ["topic", "partition"], registry=reg).labels(
        "transactions", "0"
    ).set(120)

    ingest = Paced(events.labels("features-ingest"), EVENTS_PER_S)
    letters = Paced(dead.labels("features", "undecodable"), DEAD_LETTERS_PER_S)

    def tick(elapsed: float) -> None:
        ingest(elapsed)
        letters(elapsed)
        freshness.labels("features-ingest").observe(0.02)

    return FakeService("features", "2001", reg, tick)


def retrainer() -> FakeService:
    reg = CollectorRegistry()
    Gauge("streamscore_retrain_drift_streak", "", registry=reg).set(2)
    last = Gauge("streamscore_retrain_last_decision_timestamp_seconds", "", ["decision"], registry=reg)
    last.labels("triggered").set(time.time() - 300)
    last.labels("promoted").set(time.time() - 60)
    decisions = Counter("streamscore_retrain_decisions", "", ["decision"], registry=reg)
    decisions.labels("triggered").inc(2)
    decisions.labels("promoted").inc(1)
    return FakeService("retrain", "3001", reg, lambda _elapsed: None)


def register(settings: Settings, service: FakeService, port: int) -> None:
    """The target file ``serve_metrics`` would write for this service (same name, same content)."""
    directory = targets_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    target = [{"targets": [f"127.0.0.1:{port}"], "labels": {"service": service.name, "pid": service.pid}}]
    target_path(settings, service.name, int(service.pid)).write_text(json.dumps(target))


def record_retrain(settings: Settings) -> None:
    """One retrain as the retrainer records it: a run tagged as triggered, then promoted version 3."""
    from streamscore.models.registry import Registry

    registry = Registry(settings)
    with registry.start_run("retrain-test", tags={**KIND_TAG, "streamscore.trigger": "3 drifted reports"}) as run:
        registry.set_tags(
            run, {"streamscore.outcome": "promoted", "streamscore.version": "3", "streamscore.detail": "auc <up>"}
        )


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    data_dir = tmp_path_factory.mktemp("views")
    settings = Settings(
        data_dir=data_dir,
        metrics_port=0,
        monitoring={"prometheus_url": f"http://127.0.0.1:{free_port()}", "scrape_interval_s": 1.0},  # type: ignore[arg-type]
    )
    component = PrometheusComponent(settings)
    component.prepare()
    component.log.parent.mkdir(parents=True, exist_ok=True)
    services = [
        inference_worker("1001", 5, old_version=False),
        inference_worker("1002", 7, old_version=True),
        features_processor(),
        retrainer(),
    ]
    servers = []
    stop = threading.Event()
    started = time.monotonic()

    def advance() -> None:
        while not stop.is_set():
            for service in services:
                service.tick(time.monotonic() - started)
            stop.wait(0.05)

    ticker = threading.Thread(target=advance, name="fake-services", daemon=True)
    with component.log.open("ab") as log:
        prometheus = subprocess.Popen(component.argv(), stdout=log, stderr=subprocess.STDOUT)
    try:
        ticker.start()
        for service in services:
            server, _thread = start_http_server(0, addr="127.0.0.1", registry=service.registry)
            servers.append(server)
            register(settings, service, server.server_port)
        with Prometheus.from_settings(settings) as prom:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                assert prometheus.poll() is None, component.log.read_text()[-2000:]
                # `top` rates over four scrapes and reads low until a series spans them: wait for six.
                if prom.ready() and len(prom.instant("count_over_time(up{service!=''}[1m]) >= 6")) == 4:
                    break
                time.sleep(0.5)
            else:
                pytest.fail(f"Prometheus did not scrape all four targets: {component.log.read_text()[-2000:]}")
        # After the first samples: the report's default range starts at the data, and the decision is in it.
        record_retrain(settings)
        time.sleep(2 * settings.monitoring.scrape_interval_s)  # and samples after it, so the span covers it
        yield settings
    finally:
        stop.set()
        for server in servers:
            server.shutdown()
            server.server_close()
        prometheus.terminate()
        prometheus.wait(timeout=30)


def test_snapshot_reads_every_number(monitored: Settings) -> None:
    with Prometheus.from_settings(monitored) as prom:
        snap = take_snapshot(prom, monitored)

    assert snap.targets == {"inference": (2, 2), "features": (1, 1), "retrain": (1, 1)}
    assert snap.requests_per_s["scored"] == pytest.approx(2 * SCORED_PER_S, rel=0.2)  # two workers, summed
    assert snap.events_per_s["features-ingest"] == pytest.approx(EVENTS_PER_S, rel=0.2)
    assert snap.dead_letters_per_s["features: undecodable"] == pytest.approx(DEAD_LETTERS_PER_S, rel=0.2)
    assert snap.inference_lag == 12
    assert snap.features_lag == {"transactions": 120}
    # One observation value per phase: the quantiles interpolate inside its bucket.
    assert 5 <= snap.latency_ms["total"].p50 <= 10
    assert 5 <= snap.latency_ms["total"].p99 <= 10
    assert 1 <= snap.latency_ms["queue"].p50 <= 2
    assert set(snap.latency_ms) == {"queue", "features", "inference", "total"}
    assert 0.01 <= snap.freshness_s["features-ingest"].p50 <= 0.025
    assert 0.5 <= snap.feature_age_s.p99 <= 1
    assert snap.drift_monitored == 2
    assert snap.drifted == [DriftFlag("amount", "psi", 0.41)]
    assert snap.detections == {"score": 2}
    assert sorted((w.pid, w.model, w.version) for w in snap.workers) == [("1001", "fraud", "3"), ("1002", "fraud", "3")]
    assert snap.retrain_streak == 2
    assert snap.last_decision is not None
    assert snap.last_decision[0] == "promoted"
    assert 50 <= (snap.taken_at - snap.last_decision[1]).total_seconds() <= 120
    assert snap.decisions == {"triggered": 2, "promoted": 1}


def test_top_once_prints_the_view_and_writes_png_and_json(monitored: Settings, tmp_path: Path) -> None:
    console = Console(width=120, file=io.StringIO(), record=True, color_system=None)
    run_top(monitored, once=True, console=console)
    text = console.export_text()
    assert "● inference 2/2" in text
    assert re.search(r"amount psi\s+0\.410", text)
    assert re.search(r"pid 1002\s+fraud v3", text)
    assert "no data" not in text

    run_top(monitored, png=tmp_path / "top.png", console=Console(file=io.StringIO()))
    assert (tmp_path / "top.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    console = Console(width=120, file=io.StringIO(), record=True, color_system=None)
    run_top(monitored, as_json=True, console=console)
    assert json.loads(console.export_text())["inference_lag"] == 12


def test_a_bad_query_is_one_line(monitored: Settings) -> None:
    with Prometheus.from_settings(monitored) as prom, pytest.raises(BadQuery) as caught:
        prom.instant("sum(streamscore_inference_requests_total")
    assert str(caught.value).startswith("Prometheus rejected the query 'sum(streamscore_inference_requests_total': ")
    assert "\n" not in str(caught.value)


def test_report_default_range_is_the_data_span(monitored: Settings) -> None:
    with Prometheus.from_settings(monitored) as prom:
        span = prom.data_span()
        assert span is not None
        start, end = resolve_range(span, None, None, now=span[1])
        data: ReportData = fetch(prom, monitored, start, end)

    assert start == span[0]  # less than an hour of data: the report starts with it
    assert [d.kind for d in data.decisions] == ["triggered", "promoted"]
    assert data.decisions[1].version == 3
    served = data.models["fraud v3"]
    assert max(v for v in served if v == v) == 2  # both workers, NaN skipped
    assert "fraud v2" not in data.models
    psi = [v for v in data.drift["psi"]["amount"] if v == v]
    assert psi
    assert set(psi) == {0.41}
    assert 1.0 in data.drifted["psi"]["amount"]
    assert 1.0 not in data.drifted["psi"]["hour"]
    assert any(v == v and v > 0 for v in data.throughput["requests scored"])
    assert {"total p50", "total p99", "queue p99"} <= set(data.latency_ms)
    assert {"event→online features-ingest p99", "oldest feature used p99"} <= set(data.freshness_s)


def test_report_grid_matches_prometheus_at_an_odd_step(monitored: Settings) -> None:
    """A step of fractional seconds (1000.5 s / 400 points) must still land every answer on the grid."""
    with Prometheus.from_settings(monitored) as prom:
        end = datetime.now(UTC)
        data = fetch(prom, monitored, end - timedelta(seconds=1000.5), end)

    assert data.times[1] - data.times[0] == timedelta(milliseconds=2501)
    served = [v for v in data.models["fraud v3"] if v == v]
    assert served
    assert served[-1] == 2
    assert [v for v in data.drift["psi"]["amount"] if v == v][-1] == 0.41


def test_build_report_writes_one_self_contained_page(monitored: Settings, tmp_path: Path) -> None:
    out = build_report(monitored, tmp_path / "out" / "report.html")

    page = out.read_text()
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 1
    assert base64.b64decode(images[0]).startswith(b"\x89PNG\r\n\x1a\n")
    assert figure_path(out) == tmp_path / "out" / "report.png"
    assert figure_path(out).read_bytes() == base64.b64decode(images[0])
    assert "<td class='promoted'>promoted</td><td>3</td><td>auc &lt;up&gt;</td>" in page
    assert "<td class='triggered'>triggered</td><td></td><td>3 drifted reports</td>" in page
    assert "amount (psi)" in page
    assert "hour (psi)" not in page
    assert 'src="http' not in page
    assert "<script" not in page
