from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from streamscore.kafka import admin_config, consumer_config, producer_config
from streamscore.settings import ConfigError, Settings, env_names, load_settings, settings_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_env_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS", "10.0.0.1:9092,10.0.0.2:9092")
    monkeypatch.setenv("STREAMSCORE_TOPICS__TRANSACTIONS", "tx-v2")
    monkeypatch.setenv("STREAMSCORE_TOPICS__PARTITIONS", "12")
    monkeypatch.setenv("STREAMSCORE_KAFKA__EXTRA", '{"linger.ms": "20"}')
    monkeypatch.setenv("STREAMSCORE_REDIS__URL", "rediss://cache.internal:6380/2")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "10.0.0.1:9092,10.0.0.2:9092"
    assert s.kafka.first_broker == ("10.0.0.1", 9092)
    assert (s.topics.transactions, s.topics.partitions, s.topics.score_requests) == ("tx-v2", 12, "score-requests")
    assert (s.redis.host, s.redis.port, s.redis.db, s.redis.tls) == ("cache.internal", 6380, 2, True)
    assert producer_config(s.kafka)["linger.ms"] == "20"


def test_defaults_are_loopback() -> None:
    s = Settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.redis.url == "redis://127.0.0.1:6379/0"
    assert s.schema_registry_url is None


def test_secrets_are_masked_and_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMSCORE_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STREAMSCORE_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("STREAMSCORE_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("STREAMSCORE_REDIS__PASSWORD", "redispw")
    s = load_settings()
    assert isinstance(s.kafka.sasl_password, SecretStr)
    assert "hunter2" not in repr(s)
    assert "redispw" not in repr(s)
    assert "hunter2" not in s.model_dump_json()
    for conf in (producer_config(s.kafka), consumer_config(s.kafka, "g"), admin_config(s.kafka)):
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
        assert (conf["sasl.username"], conf["sasl.password"]) == ("svc", "hunter2")


def test_consumer_never_auto_commits() -> None:
    conf = consumer_config(Settings().kafka, "group")
    assert conf["enable.auto.commit"] is False
    assert conf["enable.auto.offset.store"] is False


def test_producer_is_idempotent() -> None:
    conf = producer_config(Settings().kafka)
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["max.in.flight.requests.per.connection"] <= 5


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS", "no-port", "kafka.bootstrap_servers"),
        ("STREAMSCORE_TOPICS__PARTITIONS", "0", "topics.partitions"),
        ("STREAMSCORE_REDIS__URL", "http://x:1", "redis.url"),
        ("STREAMSCORE_METRICS_PORT", "seventy", "metrics_port"),
        ("STREAMSCORE_SCHEMA_REGISTRY_URL", "ftp://r", "schema_registry_url"),
        ("STREAMSCORE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL", "kafka"),
        ("STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS", "x:1", "STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS"),
    ],
)
def test_invalid_configuration_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, named: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_exits_2_with_one_line_on_bad_config() -> None:
    env = {**os.environ, "STREAMSCORE_TOPICS__PARTITIONS": "-3"}
    proc = subprocess.run(
        [sys.executable, "-m", "streamscore", "stack", "status"], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2
    assert "STREAMSCORE_TOPICS__PARTITIONS" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_every_setting_has_an_env_name_and_description() -> None:
    names = env_names()
    assert "STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS" in names
    table = settings_markdown()
    for line in table.splitlines()[2:]:
        env, _, description = (cell.strip() for cell in line.strip("|").split("|"))
        assert env.strip("`") in names
        assert description, f"{env} has no description"


def test_drift_thresholds_are_their_own_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_DRIFT__PSI_THRESHOLD", "0.3")
    monkeypatch.setenv("STREAMSCORE_DRIFT__INTERVAL_S", "7")
    settings = load_settings()
    assert (settings.drift.psi_threshold, settings.drift.interval_s) == (0.3, 7.0)
    assert not hasattr(settings.inference, "drift_psi_threshold")


def test_a_moved_setting_names_its_new_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_INFERENCE__DRIFT_PSI_THRESHOLD", "0.3")
    with pytest.raises(ConfigError, match="is now STREAMSCORE_DRIFT__PSI_THRESHOLD"):
        load_settings()


def test_a_nested_value_that_is_not_json_names_its_variable() -> None:
    """Not a traceback from pydantic-settings' EnvSettingsSource: one line and exit 2, like any bad setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    env["STREAMSCORE_KAFKA__EXTRA"] = "acks=all"
    done = subprocess.run([sys.executable, "-m", "streamscore", "config", "show"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "STREAMSCORE_KAFKA__EXTRA" in lines[0]
    assert "JSON" in lines[0]
