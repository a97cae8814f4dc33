"""Docker cannot run here, so the compose file is checked as data: valid against the Compose Specification,
consistent with settings and the CLI, and its init script run for real against a stand-in `streamscore`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import typer
import yaml

from streamscore.generator import GeneratorConfig, last_event_time
from streamscore.settings import Settings, env_names

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "services" / "streamscore" / "monitoring" / "grafana"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
SCHEMA_SHA256 = "f266dcbb043229405d7cedd5aec918f9102c2b3d5e3850808fdd8edd564a43ff"  # compose-go v2.16.2
PIPELINE = ("features", "inference", "retrain")  # the long-running streamscore services Prometheus scrapes


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


def _prometheus_config() -> dict[str, Any]:
    config = yaml.safe_load(_compose()["configs"]["prometheus"]["content"])
    assert isinstance(config, dict)
    return config


def _seconds(duration: str) -> float:
    """A Prometheus duration such as ``5s`` or ``1m30s``."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def _uncompose(text: str) -> str:
    """What compose makes of a string: ``$$`` is a literal ``$``. A lone ``$`` would be interpolated from the
    host's environment (``$start`` silently becomes empty), and this file means none."""
    lone = [m.start() for m in re.finditer(r"\$\$|\$", text) if m.group() == "$"]
    assert not lone, f"unescaped $ (compose would interpolate it) at {lone}: {text[lone[0] : lone[0] + 30]!r}"
    return text.replace("$$", "$")


def _cli_command(words: list[str]) -> tuple[Any, list[str]]:
    """The CLI command that ``streamscore <words>`` runs (a click command), and the arguments left for it."""
    from streamscore.cli import app

    command: Any = typer.main.get_command(app)
    rest = list(words)
    while hasattr(command, "commands"):  # a group: the next word names a command in it
        assert rest, f"`streamscore {' '.join(words)}` names a command group, not a command"
        name = rest.pop(0)
        assert name in command.commands, f"`streamscore {' '.join(words)}`: no command {name!r}"
        command = command.commands[name]
    return command, rest


def test_the_file_is_valid_against_the_compose_specification() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256  # the vendored file, unchanged
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors, "\n".join(errors)
    # The validator does reject what compose rejects (a guard against a schema that accepts anything).
    broken = _compose()
    broken["services"]["grafana"]["port"] = ["3000:3000"]
    assert not validator.is_valid(broken)


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (*_strings(key), *_strings(value))]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def test_nothing_is_interpolated_from_the_host_environment() -> None:
    for text in _strings(_compose()):
        _uncompose(text)


def test_services_and_volumes_are_declared() -> None:
    compose = _compose()
    assert {"kafka", "redis", "prometheus", "grafana", "init", *PIPELINE} <= compose["services"].keys()
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith((".", "/")) or source in compose["volumes"], f"{name}: {volume}"
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {volume} mounts a path the repository lacks"
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


def test_prometheus_scrapes_every_replica_of_every_pipeline_service_on_the_metrics_port() -> None:
    s = Settings()
    config = _prometheus_config()
    assert _seconds(config["global"]["scrape_interval"]) == s.monitoring.scrape_interval_s
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name in PIPELINE:
        job = jobs[name]
        # Docker's DNS answers a service name with every replica's address: `--scale` needs no config change.
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == [name]
        assert sd["type"] == "A"
        assert sd["port"] == s.metrics_port
        # The label the services' own file_sd targets carry, which `streamscore top` groups by.
        assert {"target_label": "service", "replacement": name} in job["relabel_configs"]
    targets = [f"{n}:{sd['port']}" for j in jobs.values() for sd in j.get("dns_sd_configs", []) for n in sd["names"]]
    targets += [t for job in jobs.values() for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert any(t.endswith(f":{s.metrics_port}") for t in targets)


def test_prometheus_keeps_samples_as_long_as_the_settings_say() -> None:
    command = _compose()["services"]["prometheus"]["command"]
    assert f"--storage.tsdb.retention.time={Settings().monitoring.retention}" in command
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    target = _compose()["services"]["prometheus"]["configs"][0]["target"]
    assert target == "/etc/prometheus/prometheus.yml"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed")
def test_prometheus_accepts_the_config(tmp_path: Path) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(_compose()["configs"]["prometheus"]["content"])
    check = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_pipeline_services_reach_kafka_and_redis_inside_the_network() -> None:
    compose = _compose()
    kafka_env = compose["services"]["kafka"]["environment"]
    internal = next(a for a in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",") if a.startswith("INTERNAL://"))
    for name in ("init", *PIPELINE):
        env = compose["services"][name]["environment"]
        assert env["STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS"] == internal.removeprefix("INTERNAL://")
        assert env["STREAMSCORE_REDIS__URL"].startswith("redis://redis:")
        assert env["STREAMSCORE_DATA_DIR"] == "/data"  # the shared volume: registry, models, offline tables
        assert "streamscore-data:/data" in compose["services"][name]["volumes"]
    assert compose["services"]["features"]["command"] == ["features", "run"]
    assert compose["services"]["inference"]["command"] == ["inference", "run"]
    assert compose["services"]["retrain"]["command"] == ["retrain", "run"]
    for name in PIPELINE:
        assert compose["services"][name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
        env = compose["services"][name]["environment"]
        assert int(env["STREAMSCORE_METRICS_PORT"]) == Settings().metrics_port  # where Prometheus looks
        assert env["STREAMSCORE_METRICS_HOST"] == "0.0.0.0"  # reachable from the Prometheus container


def test_every_streamscore_variable_is_a_real_setting() -> None:
    """A typo would stop the service (load_settings rejects unknown STREAMSCORE_* variables)."""
    for name, service in _compose()["services"].items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping, so it can be checked"
        ours = {k for k in env if k.upper().startswith("STREAMSCORE_")}
        assert ours <= env_names().keys(), (name, ours - env_names().keys())


@pytest.mark.parametrize("name", PIPELINE)
def test_every_service_command_is_a_streamscore_command(name: str) -> None:
    command, rest = _cli_command(_compose()["services"][name]["command"])
    command.make_context(name, rest)  # parses: an unknown option or a bad value raises


def test_inference_scales_out() -> None:
    """`docker compose up --scale inference=3` needs no fixed name and no host port (replicas would collide)."""
    for name in PIPELINE:
        service = _compose()["services"][name]
        assert "container_name" not in service, name
        assert "ports" not in service, name
    assert _compose()["services"]["inference"].get("deploy", {}).get("replicas", 1) <= Settings().topics.partitions


def test_grafana_shows_the_dashboard_to_anyone_on_this_machine() -> None:
    grafana = _compose()["services"]["grafana"]
    image, _, tag = grafana["image"].partition(":")
    assert image == "grafana/grafana"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin a release, not {tag!r}"
    assert _published(grafana) == {("127.0.0.1", 3000, 3000)}
    env = grafana["environment"]
    assert str(env["GF_AUTH_ANONYMOUS_ENABLED"]) == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


def _grafana_mounts() -> dict[str, Path]:
    """Container path -> repository path of each of Grafana's bind mounts; all read-only."""
    mounts = {}
    for volume in _compose()["services"]["grafana"]["volumes"]:
        source, target, *mode = volume.split(":")
        if source.startswith("."):
            assert mode == ["ro"], f"{volume}: the repository's files, mounted read-only"
            mounts[target] = (ROOT / source).resolve()
    return mounts


def _in_container(path: str, mounts: dict[str, Path]) -> Path | None:
    """The repository file behind ``path`` inside the Grafana container, if a bind mount provides it."""
    for target, source in mounts.items():
        relative = PurePosixPath(path).relative_to(target) if PurePosixPath(path).is_relative_to(target) else None
        if relative is not None:
            return source / relative
    return None


def test_grafana_provisioning_points_at_the_mounted_dashboard_and_prometheus() -> None:
    mounts = _grafana_mounts()
    datasources_dir = _in_container("/etc/grafana/provisioning/datasources", mounts)
    dashboards_dir = _in_container("/etc/grafana/provisioning/dashboards", mounts)
    assert datasources_dir == GRAFANA / "provisioning" / "datasources"
    assert dashboards_dir == GRAFANA / "provisioning" / "dashboards"

    (datasource,) = yaml.safe_load((datasources_dir / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    prometheus = _compose()["services"]["prometheus"]
    container_port = next(iter(_published(prometheus)))[2]
    assert datasource["url"] == f"http://prometheus:{container_port}"  # the compose service, inside the network
    assert _seconds(datasource["jsonData"]["timeInterval"]) == Settings().monitoring.scrape_interval_s

    (provider,) = yaml.safe_load((dashboards_dir / "streamscore.yml").read_text())["providers"]
    assert provider["type"] == "file"
    folder = _in_container(provider["options"]["path"], mounts)
    assert folder == GRAFANA / "dashboards"
    dashboard = json.loads((folder / "streamscore.json").read_text())
    # Panels reach the provisioned datasource through the variable's default.
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == datasource["uid"]
    home = _in_container(_compose()["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"],
                         mounts)  # fmt: skip
    assert home == folder / "streamscore.json"


# --- the init script, run by sh against a stand-in `streamscore` ------------------------------------------

_STUB = """#!{python}
# Stands in for `streamscore`: parses the arguments with the real CLI (a wrong option or value fails here as
# it would in the container), logs them, and plays the registry's part with a file for the champion.
import json, os, sys
from pathlib import Path

import typer

from streamscore.cli import app

command, rest, name = typer.main.get_command(app), sys.argv[1:], ""
while hasattr(command, "commands"):  # a group: the next word names a command in it
    name = rest.pop(0)
    command = command.commands[name]
params = command.make_context(name, rest).params
state = Path(os.environ["STUB_STATE"])
with (state / "calls.jsonl").open("a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "command": name, "params": params}}, default=str) + "\\n")
if name == "show":
    sys.exit(0 if (state / "champion").exists() else 1)
if name == "generate" and params["to"].endswith(".parquet"):
    Path(params["to"]).write_text("history")
if name == "train" and not (state / "reject").exists():
    (state / "champion").touch()
"""


def _init_script() -> list[str]:
    entrypoint = _compose()["services"]["init"]["entrypoint"]
    assert entrypoint[0] == "sh"
    return ["sh", *(_uncompose(part) for part in entrypoint[1:])]


def _run_init(tmp: Path) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    bin_dir, state, data = tmp / "bin", tmp / "state", tmp / "data"
    for d in (bin_dir, state, data):
        d.mkdir(exist_ok=True)
    stub = bin_dir / "streamscore"
    stub.write_text(_STUB.format(python=sys.executable))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    (state / "calls.jsonl").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STREAMSCORE_")}
    env.update(_compose()["services"]["init"]["environment"])
    env.update(STREAMSCORE_DATA_DIR=str(data), STUB_STATE=str(state), PYTHONPATH=str(ROOT))
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    done = subprocess.run(_init_script(), env=env, capture_output=True, text=True, timeout=120, check=False)
    calls_file = state / "calls.jsonl"
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()] if calls_file.exists() else []
    return done, calls


def test_init_builds_history_backfill_and_a_champion_once(tmp_path: Path) -> None:
    done, calls = _run_init(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [c["command"] for c in calls] == [
        "create", "apply", "show", "generate", "generate", "backfill", "train", "show",
    ]  # fmt: skip
    parquet, kafka = (c["params"] for c in calls if c["command"] == "generate")
    assert kafka["to"] == "kafka"
    history = tmp_path / "data" / "history.parquet"  # under STREAMSCORE_DATA_DIR
    assert history.exists()  # written under another name, then moved: a half-written file is never taken
    # One history, twice: the processor replays from Kafka exactly what the backfill and training read.
    assert {k: v for k, v in parquet.items() if k != "to"} == {k: v for k, v in kafka.items() if k != "to"}
    backfill, train = (c["params"] for c in calls if c["command"] in ("backfill", "train"))
    assert backfill["materialize"] is True  # the online store starts warm
    assert backfill["events"] == train["events"] == str(history)
    start, end = (datetime.fromisoformat(train[k]) for k in ("start", "end"))
    assert backfill["start"] == train["start"] == parquet["start"]
    assert backfill["end"] == train["end"]
    assert end - start == timedelta(hours=48)
    # The generated stream ends inside the range (its span measured, daily cycle included), and the range ends
    # about now (it is real time, not a date).
    fields = ("events", "rate", "users", "merchants", "seed")
    history = GeneratorConfig(**{f: parquet[f] for f in fields}, start=start.replace(tzinfo=UTC))
    assert last_event_time(history) <= end.replace(tzinfo=UTC)
    assert end.utcoffset() == timedelta(0)  # `date -u` prints no offset: the command line reads it as UTC
    assert abs(datetime.now(UTC) - end) < timedelta(minutes=5)

    rerun, calls = _run_init(tmp_path)  # a champion exists now: topics and registry only
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert [c["command"] for c in calls] == ["create", "apply", "show"]


def test_init_fails_without_a_champion_and_a_rerun_resumes_the_same_history(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "reject").touch()  # the gate turns the model down
    done, first = _run_init(tmp_path)
    assert done.returncode != 0  # so the pipeline does not start with nothing to serve
    assert "gate" in done.stderr

    (tmp_path / "state" / "reject").unlink()
    done, second = _run_init(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # History already on Kafka and in Parquet is not sent or written again; the range is the first run's.
    assert [c["command"] for c in second] == ["create", "apply", "show", "backfill", "train", "show"]
    train_first, train_second = (next(c for c in calls if c["command"] == "train") for calls in (first, second))
    assert train_first["params"]["start"] == train_second["params"]["start"]
    assert train_first["params"]["end"] == train_second["params"]["end"]
