"""The Grafana dashboard against the metrics the services really export.

A panel whose query names a metric no service exports shows "No data" forever, and nothing else catches it:
Grafana and Prometheus accept any name. So the names are taken from every panel's PromQL and compared with
the /metrics output of the real feature processor, inference worker and retrainer, each a child process
driven with real traffic until their labelled metrics exist (prometheus_client shows a labelled sample only
once it is used). The other way round too: a metric a service exports that no panel shows is reported.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streamscore.exporter import target_path
from streamscore.generator import GeneratorConfig, produce_to_kafka, start_ending_by
from streamscore.kafka import Producer, ensure_topics
from streamscore.serde import Serde
from streamscore.settings import Settings, child_env
from tests.conftest import free_port
from tests.inference.helpers import served_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "services" / "streamscore" / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "streamscore.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"

_METRIC = re.compile(r"\bstreamscore_[A-Za-z0-9_:]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')  # PromQL string literals
# Samples prometheus_client writes for each metric type (a family is named without these suffixes).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}
# Labelled metrics that only get a sample from a failure or a retrain, which this test does not provoke: for
# these the name must be declared (HELP/TYPE) by a service, not sampled.
NOT_PROVOKED = {
    "streamscore_dead_letters_truncated_total",  # only a dead letter over the broker's size limit
    "streamscore_features_online_store_waits_total",  # only while Redis is down or out of memory
    "streamscore_features_registry_waits_total",  # only while the schema registry is down
    "streamscore_features_resynced_entities_total",  # only after the online store lost data
    "streamscore_inference_headers_dropped_total",  # only a request with over 16 KiB of headers
    "streamscore_inference_out_of_range_inputs_total",  # only an input far outside the training data
    "streamscore_features_beyond_state_events_total",  # only after a rebuild or an eviction
    "streamscore_features_evicted_entities_total",  # only after a day of idleness
    "streamscore_features_rebuilding",
    "streamscore_features_replayed_events_total",
    "streamscore_inference_retries_total",
    "streamscore_online_write_retries_total",
    "streamscore_retrain_decisions_total",
    "streamscore_retrain_last_decision_timestamp_seconds",
}
SERVICES = {  # service name in the target file -> command
    "features": ["features", "run"],
    "inference": ["inference", "run"],
    "retrain": ["retrain", "run"],
}


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query."""
    return [(p["title"], t["expr"]) for p in _panels(dashboard) for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The ``streamscore_*`` metric names a PromQL expression reads (string literals, e.g. label values, skipped).

    >>> sorted(metric_names('sum(rate(streamscore_a_total{x="streamscore_not_me"}[1m])) / streamscore_b'))
    ['streamscore_a_total', 'streamscore_b']
    """
    return set(_METRIC.findall(_STRING.sub('""', expr)))


def _referenced() -> dict[str, set[str]]:
    """Metric name -> titles of the panels that read it."""
    out: dict[str, set[str]] = {}
    for title, expr in _queries(_dashboard()):
        for name in metric_names(expr):
            out.setdefault(name, set()).add(title)
    return out


# --- the dashboard as a file -----------------------------------------------------------------------------


def test_the_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "streamscore"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert variable["current"]["value"] == datasource["uid"]  # resolves to the provisioned Prometheus

    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["w"] > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]  # Grafana's grid is 24 columns wide
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_every_query_reads_a_metric() -> None:
    for title, expr in _queries(_dashboard()):
        assert metric_names(expr) or re.search(r"\bup\b", expr), f"{title}: {expr}"


def test_the_dashboard_shows_what_top_shows() -> None:
    """The panels the issue asks for, the same vital signs `streamscore top` shows in a terminal."""
    wanted = {
        "streamscore_inference_requests_total", "streamscore_features_events_in_total",  # throughput
        "streamscore_inference_consumer_lag", "streamscore_features_consumer_lag",  # lag
        "streamscore_inference_latency_ms_bucket",  # latency, per phase
        "streamscore_features_freshness_seconds_bucket", "streamscore_inference_feature_freshness_seconds_bucket",
        "streamscore_drift_drifted", "streamscore_drift_statistic", "streamscore_drift_detections_total",
        "streamscore_inference_model_info", "streamscore_dead_letters_total",
        "streamscore_online_write_seconds_bucket", "streamscore_online_read_seconds_bucket",
        "streamscore_retrain_decisions_total", "streamscore_retrain_drift_streak",
    }  # fmt: skip
    assert wanted <= _referenced().keys(), wanted - _referenced().keys()
    latency = [e for _, e in _queries(_dashboard()) if "streamscore_inference_latency_ms_bucket" in e]
    assert any(re.search(r"by \(le, phase\)", e) for e in latency)  # queue, features, inference, total
    assert {"0.5", "0.99"} <= {m for e in latency for m in re.findall(r"histogram_quantile\(([\d.]+)", e)}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed")
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """Prometheus's own parser, through a rules file (Grafana's $__rate_interval replaced by a duration)."""
    rules = [
        {"record": f"dashboard:query_{n}", "expr": expr.replace("$__rate_interval", "1m")}
        for n, (_, expr) in enumerate(_queries(_dashboard()))
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


# --- against the running services ------------------------------------------------------------------------


class _Service:
    """One `python -m streamscore ...` child process with its own metrics port; output to ``log``."""

    def __init__(self, name: str, settings: Settings, log: Path) -> None:
        self.name = name
        self.settings = settings.model_copy(update={"metrics_port": free_port()})
        self.log = log
        env = child_env(self.settings)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamscore", *SERVICES[name]], cwd=ROOT, env=env, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.port: int | None = None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")

    def metrics_port(self) -> int | None:
        """The port the service serves /metrics on, from the target file it registers (the first free port
        from the one asked for, so not necessarily that one)."""
        path = target_path(self.settings, self.name, self.proc.pid)
        if self.port is None and path.exists():
            self.port = int(json.loads(path.read_text())[0]["targets"][0].rsplit(":", 1)[1])
        return self.port

    def scrape(self) -> str:
        port = self.metrics_port()
        if port is None:
            return ""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _exposed(text: str) -> tuple[set[str], set[str]]:
    """(names a scrape declares: every sample name its families' types give, names that have a sample)."""
    declared: set[str] = set()
    sampled: set[str] = set()
    for family in text_string_to_metric_families(text):
        declared.update(family.name + suffix for suffix in _SUFFIXES[family.type])
        sampled.update(sample.name for sample in family.samples)
    return declared, sampled


def _families(text: str) -> dict[str, str]:
    """Name -> type of the streamscore metric families a scrape declares (``_created`` companions left out)."""
    types = {f.name: f.type for f in text_string_to_metric_families(text) if f.name.startswith("streamscore_")}
    return {n: t for n, t in types.items() if not (n.endswith("_created") and n.removesuffix("_created") in types)}


def _traffic(s: Settings, seed: int) -> None:
    """A few seconds' worth of transactions, each behind its score request; requests for cards nobody has
    seen (their features are missing: defaults); one undecodable message on each input topic (dead letters
    from both stages)."""
    config = GeneratorConfig(events=400, rate=100.0, users=100, merchants=20, seed=seed)
    config = replace(config, start=start_ending_by(config, datetime.now(tz=UTC)))
    produce_to_kafka(config, s, requests=True)
    producer = Producer(s.kafka)
    serde = Serde("score_request")
    for _ in range(5):
        user = f"u-unseen-{uuid.uuid4().hex[:8]}"
        request = {
            "request_id": f"r-{uuid.uuid4().hex}", "user_id": user, "merchant_id": "m-unseen", "amount": 12.5,
            "currency": "EUR", "country": "DE", "channel": "ECOM", "request_time": datetime.now(tz=UTC),
            "context": None,
        }  # fmt: skip
        producer.send(s.topics.score_requests, serde.encode(request), key=user)
    producer.send(s.topics.score_requests, b"\x00\x01not avro", key=b"garbage")
    producer.send(s.topics.transactions, b"\x00\x01not avro", key=b"garbage")
    producer.flush()


@pytest.fixture(scope="module")
def scraped(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Service name -> its /metrics text, once every metric the dashboard reads has a sample (or ran out of
    time: the test then names what is missing)."""
    data_dir = tmp_path_factory.mktemp("dashboard")
    own_redis = settings.redis.model_copy(update={"url": settings.redis.url.rsplit("/", 1)[0] + "/6"})
    s = served_settings(settings.model_copy(update={"redis": own_redis}), data_dir)
    tag = uuid.uuid4().hex[:8]
    s = s.model_copy(
        update={
            "topics": s.topics.model_copy(
                update={"transactions": f"tx-{tag}", "transactions_by_merchant": f"tx-by-merchant-{tag}"}
            ),
            "features": s.features.model_copy(update={"group_id": f"features-{tag}", "checkpoint_interval_s": 1.0}),
            # Drift gauges appear with the first report; a retrain is never wanted here.
            "drift": s.drift.model_copy(update={"interval_s": 2.0}),
            "retrain": s.retrain.model_copy(update={"group_id": f"retrain-{tag}", "min_reports": 1_000_000}),
        }
    )
    ensure_topics(s)
    wanted = {n for n in _referenced() if n not in NOT_PROVOKED}
    services = [_Service(name, s, data_dir / f"{name}.log") for name in SERVICES]
    texts: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 240
        seed = settled = 0
        while time.monotonic() < deadline:
            for service in services:
                service.check_alive()
            if all(service.metrics_port() for service in services):
                seed += 1
                _traffic(s, seed)
                time.sleep(2.0)
                texts = {service.name: service.scrape() for service in services}
                declared, sampled = (set().union(*parts) for parts in zip(*map(_exposed, texts.values()), strict=True))
                if wanted <= sampled:
                    break
                # A name no service declares never gets a sample (a typo): stop waiting for it once the rest
                # have been there a few rounds.
                settled = settled + 1 if wanted & declared <= sampled else 0
                if settled >= 3:
                    break
            else:
                time.sleep(0.5)
        yield texts
    finally:
        for service in services:
            service.stop()
        for service in services:
            with contextlib.suppress(OSError):
                assert "Traceback" not in service.log.read_text(errors="replace"), f"{service.name}:\n{service.tail()}"


@pytest.mark.timeout(600)
def test_every_metric_the_dashboard_reads_is_exported(scraped: dict[str, str]) -> None:
    assert set(scraped) == set(SERVICES), "a service never served /metrics"
    declared: set[str] = set()
    sampled: set[str] = set()
    for text in scraped.values():
        d, s = _exposed(text)
        declared |= d
        sampled |= s
    referenced = _referenced()
    unknown = {name: sorted(titles) for name, titles in referenced.items() if name not in declared | sampled}
    assert not unknown, f"panels read metrics no service exports: {unknown}"
    silent = {name: sorted(titles) for name, titles in referenced.items()
              if name not in sampled and name not in NOT_PROVOKED}  # fmt: skip
    assert not silent, f"exported but never sampled under traffic: {silent}"


@pytest.mark.timeout(600)
def test_every_metric_the_services_export_is_on_the_dashboard(scraped: dict[str, str]) -> None:
    families = {name: kind for text in scraped.values() for name, kind in _families(text).items()}
    referenced = _referenced().keys()
    hidden = sorted(f for f, kind in families.items() if not any(f + s in referenced for s in _SUFFIXES[kind]))
    assert not hidden, f"exported, on no panel: {hidden}"
