"""`stack up`'s Prometheus finds and scrapes every running service, through the target files they write."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streamscore.settings import Settings, child_env
from streamscore.stack import Stack
from tests.conftest import free_port
from tests.inference.helpers import served_settings

pytestmark = pytest.mark.integration

SERVICES = {"features": ["features", "run"], "inference": ["inference", "run"], "retrain": ["retrain", "run"]}


@pytest.fixture(scope="module")
def monitored(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A served stack whose own Prometheus (started by `Stack.up`) watches its data dir's target files."""
    s = served_settings(settings, tmp_path_factory.mktemp("monitored"))
    s = s.model_copy(
        update={
            "metrics_port": free_port(),
            "monitoring": s.monitoring.model_copy(update={"prometheus_url": f"http://127.0.0.1:{free_port()}"}),
        }
    )
    stack = Stack(s)
    states = {status.name: status.state for status in stack.up()}
    assert states == {"kafka": "external", "redis": "external", "prometheus": "started"}
    try:
        yield s
    finally:
        stack.down()


def _up(s: Settings) -> dict[str, list[float]]:
    answer = httpx.get(f"{s.monitoring.prometheus_url}/api/v1/query", params={"query": "up"}, timeout=5).json()
    assert answer["status"] == "success"
    found: dict[str, list[float]] = {}
    for sample in answer["data"]["result"]:
        found.setdefault(sample["metric"].get("service", sample["metric"]["job"]), []).append(float(sample["value"][1]))
    return found


def test_every_running_service_is_scraped_and_up(monitored: Settings, tmp_path: Path) -> None:
    env = child_env(monitored)
    env["STREAMSCORE_METRICS_PORT"] = str(monitored.metrics_port)  # all three start here and move up
    procs = {}
    try:
        for name, args in SERVICES.items():
            with (tmp_path / f"{name}.log").open("ab") as log:
                procs[name] = subprocess.Popen([sys.executable, "-m", "streamscore", *args], env=env, stdout=log,
                                               stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 90
        up = _up(monitored)
        while time.monotonic() < deadline and not all(up.get(n) == [1.0] for n in SERVICES):
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited: {(tmp_path / f'{name}.log').read_text()[-2000:]}"
            time.sleep(1)
            up = _up(monitored)
        assert {n: up.get(n) for n in SERVICES} == {n: [1.0] for n in SERVICES}
        assert up["prometheus"] == [1.0]
        targets = [json.loads(p.read_text())[0] for p in (monitored.data_dir / "prometheus" / "targets").glob("*.json")]
        ports = sorted(int(t["targets"][0].rsplit(":", 1)[1]) for t in targets)
        assert len(set(ports)) == 3  # one port each
        assert ports[0] == monitored.metrics_port  # from the setting up
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(60)
    # A clean stop removes the service's target: Prometheus stops scraping it instead of reporting it down.
    assert not list((monitored.data_dir / "prometheus" / "targets").glob("*.json"))
