"""Docker cannot run here, so the compose file is checked as data: valid, and consistent with settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from services.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _published(service: dict[str, Any]) -> set[tuple[str, int, int]]:
    out = set()
    for mapping in service.get("ports", []):
        host_ip, host_port, container_port = str(mapping).split(":")
        out.add((host_ip, int(host_port), int(container_port)))
    return out


def test_services_and_volumes_are_declared() -> None:
    compose = _compose()
    assert {"kafka", "redis", "prometheus"} <= compose["services"].keys()
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith((".", "/")) or source in compose["volumes"], f"{name}: {volume}"
        for config in service.get("configs", []):
            assert config["source"] in compose["configs"], name


def test_kafka_matches_the_default_bootstrap() -> None:
    s = Settings()
    host, port = s.kafka.first_broker
    kafka = _compose()["services"]["kafka"]
    assert (host, port, port) in _published(kafka)
    env = kafka["environment"]
    assert f"HOST://{host}:{port}" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert kafka["image"].endswith(":" + s.stack.kafka_version)
    assert int(env["KAFKA_NUM_PARTITIONS"]) == s.topics.partitions
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]) == "false"  # topics come from `topics create`


def test_redis_matches_the_default_url() -> None:
    s = Settings()
    redis = _compose()["services"]["redis"]
    assert (s.redis.host, s.redis.port, 6379) in _published(redis)
    assert redis["command"][redis["command"].index("--appendfsync") + 1] == "everysec"


def test_prometheus_scrapes_the_default_metrics_port() -> None:
    compose = _compose()
    config = yaml.safe_load(compose["configs"]["prometheus"]["content"])
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert any(t.endswith(f":{Settings().metrics_port}") for t in targets)


def test_pipeline_services_reach_kafka_and_redis_inside_the_network() -> None:
    compose = _compose()
    kafka_env = compose["services"]["kafka"]["environment"]
    internal = next(a for a in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",") if a.startswith("INTERNAL://"))
    for name in ("init", "features", "inference"):
        env = compose["services"][name]["environment"]
        assert env["STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS"] == internal.removeprefix("INTERNAL://")
        assert env["STREAMSCORE_REDIS__URL"].startswith("redis://redis:")
        # Every variable the compose file sets must be a real setting (a typo would stop the service).
        from services.settings import env_names

        assert set(env) <= env_names().keys(), set(env) - env_names().keys()
    assert compose["services"]["features"]["command"] == ["features", "run"]
    assert compose["services"]["inference"]["command"] == ["inference", "run"]
    for name in ("features", "inference"):
        assert compose["services"][name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
