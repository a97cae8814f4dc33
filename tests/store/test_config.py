"""Feast configuration from the settings, the programmatic `feast apply`, and the CLI's environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from feast import FileSource, KafkaSource
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.repo_config import load_repo_config
from google.protobuf.message import Message

from streamscore.settings import ConfigError, Settings, load_settings, settings_env
from streamscore.store import (
    REPO_PATH,
    apply_definitions,
    feast_env,
    feature_store,
    quiet_feast,
    repo_config,
)
from streamscore.store.config import redis_connection_string, registry_path
from streamscore.store.offline import STORE_TYPE

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Stream feature views are experimental:RuntimeWarning"),
]

OBJECTS = [
    "streamscore",
    "merchant_transactions_offline",
    "transactions_for_merchant_transactions",
    "transactions_for_user_transactions",
    "user_transactions_offline",
    "merchant",
    "user",
    "merchant_transactions",
    "user_transactions",
    "fraud_model_v1",
]


@pytest.fixture(scope="module")
def applied(settings: Settings) -> list[str]:
    return apply_definitions(settings)


def test_repo_path_is_the_feast_repo() -> None:
    assert (REPO_PATH / "definitions.py").is_file()
    assert (REPO_PATH / "feature_store.yaml").is_file()


def test_repo_config_follows_the_settings(tmp_path: Path) -> None:
    s = Settings(redis={"url": "redis://cache.internal:6390/3"}, data_dir=tmp_path)
    config = repo_config(s)
    assert (config.project, config.provider, config.entity_key_serialization_version) == ("streamscore", "local", 3)
    assert config.registry.path == str(tmp_path / "feast" / "registry.db")
    assert (tmp_path / "feast").is_dir()
    assert config.registry.cache_ttl_seconds == 60
    assert config.online_store.type == "redis"
    assert config.online_store.connection_string == "cache.internal:6390,db=3"
    assert config.offline_store.type == STORE_TYPE  # the ASOF plugin; Feast's own DuckDB store on request:
    plain = Settings(
        redis={"url": "redis://cache.internal:6390/3"}, data_dir=tmp_path, training={"offline_store": "duckdb"}
    )
    assert repo_config(plain).offline_store.type == "duckdb"
    assert config.repo_path == REPO_PATH


@pytest.mark.parametrize("password", ["s3cret", "p,w", "123", "1e3", "true", "null", 'a"b\\c', "x=y", "ünï cödé"])
def test_connection_string_survives_feasts_parser(password: str) -> None:
    """Feast json-decodes each value and splits on commas: any password must come back as the same string."""
    s = Settings(redis={"url": "rediss://cache.internal:6380/2", "password": password, "ssl_ca_certs": "/ca,1.pem"})
    nodes, params = RedisOnlineStore._parse_connection_string(redis_connection_string(s.redis))
    assert nodes == [{"host": "cache.internal", "port": "6380"}]
    assert params == {"db": 2, "password": password, "ssl": True, "ssl_ca_certs": "/ca,1.pem"}


def test_connection_string_takes_credentials_from_the_url() -> None:
    s = Settings(redis={"url": "redis://alice:p%40ss@127.0.0.1:6379/0"})
    _, params = RedisOnlineStore._parse_connection_string(redis_connection_string(s.redis))
    assert params == {"db": 0, "username": "alice", "password": "p@ss"}


def test_ipv6_literal_is_refused() -> None:
    with pytest.raises(ConfigError, match="IPv6"):
        redis_connection_string(Settings(redis={"url": "redis://[::1]:6379/0"}).redis)


def test_feast_env_makes_feature_store_yaml_equal_to_repo_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Settings(redis={"url": "redis://127.0.0.1:6390/1", "password": "pw,1"}, data_dir=tmp_path)
    env = feast_env(s)
    assert set(env) == {"FEAST_REGISTRY_PATH", "FEAST_REDIS_CONNECTION"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from_yaml = load_repo_config(REPO_PATH, REPO_PATH / "feature_store.yaml")
    ours = repo_config(s)
    assert from_yaml.project == ours.project
    assert from_yaml.registry.path == ours.registry.path == str(registry_path(s))
    assert from_yaml.online_store.connection_string == ours.online_store.connection_string
    assert from_yaml.entity_key_serialization_version == ours.entity_key_serialization_version == 3
    assert from_yaml.offline_store.type == ours.offline_store.type == STORE_TYPE


def test_feast_env_refuses_what_yaml_would_mangle(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FEAST_REDIS_CONNECTION"):
        feast_env(Settings(redis={"url": "redis://127.0.0.1:6390/1", "password": "a #comment"}, data_dir=tmp_path))


def test_settings_env_rebuilds_the_same_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(
        kafka={
            "bootstrap_servers": "k1:9092,k2:9092",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "u",
            "sasl_password": "p",
            "extra": {"linger.ms": "5"},
        },
        redis={"url": "rediss://r:6380/1", "password": "x"},
        schema_registry_url="http://registry:8081",
        data_dir=tmp_path,
        metrics_port=0,
    )
    for name, value in settings_env(s).items():
        monkeypatch.setenv(name, value)
    assert load_settings() == s


def test_apply_registers_both_views_and_the_service(settings: Settings, applied: list[str]) -> None:
    assert applied == OBJECTS
    store = feature_store(settings)
    with quiet_feast():
        assert sorted(v.name for v in store.list_stream_feature_views()) == [
            "merchant_transactions",
            "user_transactions",
        ]
        assert [s.name for s in store.list_feature_services()] == ["fraud_model_v1"]
        assert sorted(e.name for e in store.list_entities()) == ["merchant", "user"]
        service = store.get_feature_service("fraud_model_v1")
        views = {v.name: v for v in store.list_stream_feature_views()}
    assert [p.name for p in service.feature_view_projections] == ["user_transactions", "merchant_transactions"]
    for projection in service.feature_view_projections:
        view = views[projection.name]
        # The service serves every feature of the view. The registered view also lists its join key among its
        # features (Feast's StreamFeatureView.to_proto stores set(entity_columns + features)): not served.
        served = {f.name for f in projection.features}
        assert served == {f.name for f in view.features} - set(view.join_keys)
        assert set(view.join_keys) <= {f.name for f in view.features}


def _comparable(message: Message) -> bytes:
    """A registry object's proto without what every apply changes although the definition did not.

    That is the created/last-updated times, and for stream views the version number and the order of the
    features: Feast stores an SFV's features as ``set(entity_columns + features)``, join key included, so a
    fresh definition always differs from the registered one and each apply records a new version.
    """
    copy = type(message)()
    copy.CopyFrom(message)
    stack = [copy]
    while stack:
        current = stack.pop()
        for field, value in current.ListFields():
            if field.name in ("created_timestamp", "last_updated_timestamp", "current_version_number"):
                current.ClearField(field.name)
            elif field.name == "features" and field.is_repeated and field.message_type.name == "FeatureSpecV2":
                ordered = [f.SerializeToString() for f in sorted(value, key=lambda f: f.name)]
                del value[:]
                for raw in ordered:
                    value.add().ParseFromString(raw)
            elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
                stack.extend(value if field.is_repeated else [value])
    return copy.SerializeToString(deterministic=True)


def test_apply_is_idempotent(settings: Settings, applied: list[str]) -> None:
    def registry_state() -> list[tuple[str, str, bytes]]:
        store = feature_store(settings)
        with quiet_feast():
            objects = [
                *store.list_stream_feature_views(),
                *store.list_feature_views(),
                *store.list_feature_services(),
                *store.list_entities(),
                *store.list_data_sources(),
            ]
        return sorted((type(o).__name__, o.name, _comparable(o.to_proto())) for o in objects)

    before = registry_state()
    assert apply_definitions(settings) == applied
    assert registry_state() == before


def test_apply_uses_the_settings_given_and_restores_the_environment(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """definitions.py reads load_settings() at import: the fresh import must see these settings, not the
    process environment, and leave that environment as it was."""
    monkeypatch.setenv("STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS", "elsewhere:9092")
    environ = dict(os.environ)
    other = settings.model_copy(
        update={
            "data_dir": tmp_path,
            "kafka": settings.kafka.model_copy(update={"bootstrap_servers": "broker-b:9092"}),
            "topics": settings.topics.model_copy(update={"transactions": "transactions-b"}),
        }
    )
    assert apply_definitions(other) == OBJECTS
    assert dict(os.environ) == environ
    store = feature_store(other)
    with quiet_feast():
        view = store.get_stream_feature_view("user_transactions")
    assert isinstance(view.stream_source, KafkaSource)
    assert view.stream_source.kafka_options.kafka_bootstrap_servers == "broker-b:9092"
    assert view.stream_source.kafka_options.topic == "transactions-b"
    assert isinstance(view.batch_source, FileSource)
    assert view.batch_source.path == str(tmp_path / "offline" / "user_transactions.parquet")
    assert registry_path(other).is_file()
