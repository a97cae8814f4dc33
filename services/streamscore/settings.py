"""One settings object for every streamscore service.

Everything configurable lives here and is read from ``STREAMSCORE_*`` environment variables (nested
fields use ``__``: ``STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS``) or a ``.env`` file. The object is built once
at the edge (CLI, test fixture) and handed down; nothing else reads the environment.

>>> s = Settings(kafka={"bootstrap_servers": "127.0.0.1:19092"})
>>> s.kafka.bootstrap_servers, s.topics.transactions, s.topics.partitions
('127.0.0.1:19092', 'transactions', 4)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from streamscore.bounds import InputBounds
from streamscore.errors import StreamscoreError

__all__ = [
    "ConfigError",
    "DriftSettings",
    "FeatureSettings",
    "InferenceSettings",
    "KafkaSettings",
    "ModelSettings",
    "MonitoringSettings",
    "RedisSettings",
    "RetrainSettings",
    "Settings",
    "StackSettings",
    "TopicSettings",
    "TrainingSettings",
    "child_env",
    "env_names",
    "load_settings",
    "settings_env",
    "settings_markdown",
]

ENV_PREFIX = "STREAMSCORE_"
ENV_NESTED_DELIMITER = "__"


class ConfigError(StreamscoreError):
    """Configuration that cannot work; the CLI prints it as one line and exits with status 2."""

    exit_code = 2


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback) / "streamscore"


def _host_port(address: str, *, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """How to reach the brokers; the security fields map one to one onto librdkafka keys."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list")
    client_id: str = Field("streamscore", description="Client id prefix shown in broker logs and quotas")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = Field(
        None, description="sasl.mechanism; required with SASL_*"
    )
    sasl_username: str | None = Field(None, description="sasl.username")
    sasl_password: SecretStr | None = Field(None, description="sasl.password (secret)")
    ssl_ca_location: Path | None = Field(None, description="ssl.ca.location (CA bundle)")
    ssl_certificate_location: Path | None = Field(None, description="ssl.certificate.location (client cert)")
    ssl_key_location: Path | None = Field(None, description="ssl.key.location (client key)")
    ssl_key_password: SecretStr | None = Field(None, description="ssl.key.password (secret)")
    partitioner: Literal["crc32", "murmur2"] = Field(
        "crc32",
        description="How producers of transactions pick a partition from the key: crc32 (librdkafka, confluent-kafka)"
        " or murmur2 (the Java client); ours use it, and the feature processor checks events against it",
    )
    extra: dict[str, str] = Field(default_factory=dict, description="Further librdkafka properties, as a JSON object")

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for address in value.split(","):
            _host_port(address.strip(), what="each bootstrap server")
        return value

    @model_validator(mode="after")
    def _check_sasl(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism is None:
                raise ValueError(f"security_protocol={self.security_protocol} needs sasl_mechanism")
            if self.sasl_mechanism != "OAUTHBEARER" and not (self.sasl_username and self.sasl_password):
                raise ValueError(f"sasl_mechanism={self.sasl_mechanism} needs sasl_username and sasl_password")
        return self

    @property
    def first_broker(self) -> tuple[str, int]:
        return _host_port(self.bootstrap_servers.split(",")[0].strip(), what="bootstrap server")


class RedisSettings(_Section):
    """The Redis that backs Feast's online store."""

    url: str = Field("redis://127.0.0.1:6379/0", description="redis:// or rediss:// (TLS) URL")
    password: SecretStr | None = Field(None, description="Redis AUTH password (secret)")
    ssl_ca_certs: Path | None = Field(None, description="CA bundle for rediss:// URLs")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
            raise ValueError(f"must look like redis://host:port/db, got {value!r}")
        return value

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme == "rediss"

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlparse(self.url).port or 6379

    @property
    def db(self) -> int:
        path = urlparse(self.url).path.strip("/")
        return int(path) if path.isdigit() else 0


class TopicSettings(_Section):
    """Topic names (one per payload) and their partitioning."""

    transactions: str = Field("transactions", description="Raw card transactions")
    score_requests: str = Field("score-requests", description="Scoring requests")
    predictions: str = Field("predictions", description="Model outputs")
    drift: str = Field("drift", description="Drift reports")
    dead_letters: str = Field("dead-letters", description="Failed messages, reason in headers")
    transactions_by_merchant: str = Field(
        "transactions-by-merchant", description="Accepted transactions re-keyed by merchant (internal)"
    )
    features_state: str = Field(
        "features-state",
        description="Prefix of the feature processor's compacted state topics (`<prefix>-ingest`, `-rekey`)",
    )
    partitions: int = Field(4, ge=1, le=1024, description="Partitions of each topic we create")
    replication_factor: int = Field(1, ge=1, le=16, description="Replicas of each topic we create")


class InputSettings(_Section):
    """Bounds on what producers send, the same for the feature processor, the backfill and the workers."""

    max_amount: float = Field(
        10_000_000.0, gt=0, description="Largest transaction amount accepted; larger ones are dead-lettered"
    )
    max_id_length: int = Field(128, ge=1, le=4096, description="Longest event, user, merchant or request id")

    @property
    def bounds(self) -> InputBounds:
        return InputBounds(max_id_length=self.max_id_length, max_amount=self.max_amount)


class FeatureSettings(_Section):
    """The stream feature processor (`streamscore features run`)."""

    engine: Literal["faust", "kafka"] = Field(
        "faust",
        description="What feeds the stages: faust-streaming (the default) or a plain confluent-kafka consumer"
        " (faster, cooperative rebalancing); both keep the same state, offsets and group",
    )
    group_id: str = Field("streamscore-features", description="Consumer group (and faust app id)")
    allowed_lateness_s: float = Field(
        60.0, ge=0, description="How far behind its user's watermark an event may still count"
    )
    max_future_s: float = Field(300.0, ge=0, description="Events further ahead of the wall clock are invalid")
    batch_size: int = Field(5000, ge=1, description="Most events per processing batch")
    batch_within_ms: int = Field(20, ge=1, description="Longest wait to fill a batch (adds to freshness)")
    checkpoint_interval_s: float = Field(
        5.0, gt=0, description="Seconds between state checkpoints to Kafka (offsets are committed after each)"
    )
    idle_margin_s: float = Field(
        3600.0,
        ge=0,
        description="Extra idle time, beyond the longest window plus lateness, before an entity's state is evicted;"
        " also how much further back a rebuild replays",
    )
    session_timeout_s: float = Field(
        10.0, ge=6, description="A processor silent this long loses its partitions to the others"
    )
    backfill_engine: Literal["duckdb", "spark"] = Field(
        "duckdb",
        description="`features backfill` engine: duckdb on this machine, or spark (needs the spark extra and Java 17+)",
    )
    spark_master: str = Field(
        "local[*]",
        min_length=1,
        description="Spark master of the spark backfill and the spark offline store: local[N], spark://host:7077, yarn",
    )


class ModelSettings(_Section):
    """The model registry (MLflow) and how a registered ONNX model is run."""

    name: str = Field("fraud-detector", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Registered model name")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking server; unset = sqlite + local artifacts under data_dir/mlflow"
    )
    providers: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda|tensorrt)(,(cpu|cuda|tensorrt))*$",
        description="ONNX Runtime providers in preference order; auto = TensorRT, CUDA, CPU as available",
    )
    intra_op_threads: int = Field(1, ge=0, description="ONNX Runtime threads per session; 0 = one per core")


class TrainingSettings(_Section):
    """`streamscore train`: data, split, imbalance and the validation gate."""

    feature_service: str = Field("fraud_model_v1", description="Feast FeatureService the model reads")
    validation_fraction: float = Field(0.15, gt=0, lt=0.5, description="Latest-but-test share of the time range")
    test_fraction: float = Field(0.15, gt=0, lt=0.5, description="Latest share of the time range, for the gate")
    min_positives: int = Field(20, ge=1, description="Fewest fraud labels each split needs")
    gate_margin: float = Field(
        0.002, ge=0, lt=1, description="ROC-AUC and PR-AUC must beat the baseline and the champion by this"
    )
    equivalence_tolerance: float = Field(
        1e-4, gt=0, description="Largest absolute ONNX-vs-source score difference on the test rows"
    )
    max_epochs: int = Field(40, ge=1, description="MLP epochs (early stopping on the validation window)")
    offline_store: Literal["asof", "duckdb", "spark"] = Field(
        "asof",
        description="Feast offline store of the training sets' point-in-time join: asof = DuckDB ASOF JOIN"
        " (streamscore.store.offline), duckdb = Feast's own range join (~200x slower at 100k label rows),"
        " spark = a sorted join on Spark at features.spark_master (streamscore.store.offline_spark)",
    )


class InferenceSettings(_Section):
    """The inference workers (`streamscore inference run`)."""

    group_id: str = Field("streamscore-inference", description="Consumer group of the workers")
    instance_id: str | None = Field(
        None, description="Stable worker name (transactional.id, group.instance.id); unset = <host>-<free slot>"
    )
    session_timeout_s: float = Field(
        10.0, ge=6, description="A worker silent this long (crashed, not restarted) loses its partitions"
    )
    max_batch: int = Field(256, ge=1, le=100_000, description="Most requests scored together")
    max_delay_ms: int = Field(
        0, ge=0, description="Wait after a batch's first request for more (0: score what has arrived at once)"
    )
    guarantee: Literal["at-least-once", "exactly-once"] = Field(
        "at-least-once", description="exactly-once uses Kafka transactions; readers need read_committed"
    )
    threshold: float | None = Field(None, ge=0, le=1, description="Decision threshold; unset = the model card's")
    reload_interval_s: float = Field(5.0, gt=0, description="How often workers check the champion alias")


class DriftSettings(_Section):
    """What each inference worker reports on the drift topic, and when an input counts as drifted."""

    interval_s: float = Field(30.0, gt=0, description="Seconds between drift reports per worker")
    psi_threshold: float = Field(0.2, gt=0, description="PSI above which a model input counts as drifted")
    wasserstein_threshold: float = Field(
        0.25, gt=0, description="Wasserstein-1 distance, in reference stds, above which an input counts as drifted"
    )
    missing_threshold: float = Field(
        0.1, gt=0, le=1, description="Rise of an input's missing rate over the reference that counts as drift"
    )
    min_count: int = Field(200, ge=1, description="Fewest predictions in a window before it may be flagged")
    detector: Literal["adwin", "page_hinkley"] = Field(
        "adwin", description="river detector on the score stream and on the delayed-label error rate"
    )
    labels: bool = Field(True, description="Match delayed labels (transactions' is_fraud, event id = request id)")


class RetrainSettings(_Section):
    """`streamscore retrain run`: when persistent drift retrains the model, and on which data."""

    group_id: str = Field("streamscore-retrain", description="Consumer group reading the drift topic")
    min_drifted_features: int = Field(
        1, ge=1, description="Drifted inputs (statistic above threshold) a report needs to count as drifted"
    )
    min_reports: int = Field(
        3, ge=1, description="Drifted reports in a row, about the serving champion, that trigger a retrain"
    )
    min_duration_s: float = Field(0.0, ge=0, description="Seconds those reports' windows must span at least (0 = any)")
    window_h: float = Field(
        24.0, gt=0, description="Hours of event time, up to the newest transaction, the new model trains on"
    )
    warmup_h: float = Field(
        24.0, ge=0, description="Event time replayed before the window so its windowed features are whole"
    )
    buffer_rows: int = Field(
        50_000, ge=1, description="Transactions decoded in memory (~1 KB each) before the window spills to disk"
    )
    cooldown_s: float = Field(600.0, ge=0, description="Seconds after a retrain before drift may trigger another")
    model: Literal["mlp", "gbt"] = Field("mlp", description="Model family the retrain trains")


class MonitoringSettings(_Section):
    """The Prometheus that scrapes every service, and what `streamscore top` and `report` read from it."""

    prometheus_url: str = Field(
        "http://127.0.0.1:9090", description="Prometheus HTTP API (and where `stack up` runs one)"
    )
    scrape_interval_s: float = Field(5.0, gt=0, le=300, description="Seconds between scrapes of each service")
    retention: str = Field("15d", pattern=r"^\d+[hdwy]$", description="How long the local Prometheus keeps samples")

    @field_validator("prometheus_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"must be an http(s)://host:port URL, got {value!r}")
        return value.rstrip("/")

    @property
    def prometheus_host(self) -> str:
        return urlparse(self.prometheus_url).hostname or "127.0.0.1"

    @property
    def prometheus_port(self) -> int:
        return urlparse(self.prometheus_url).port or 9090


class StackSettings(_Section):
    """The local development stack (`streamscore stack`): versions and the ports that are not in a URL."""

    kafka_version: str = Field("3.9.1", pattern=r"^3\.9\.\d+$", description="Apache Kafka from Maven Central")
    kafka_controller_port: int = Field(9093, gt=0, lt=65536, description="KRaft controller listener port")
    kafka_heap: str = Field("512m", pattern=r"^\d+[mg]$", description="Broker JVM heap (-Xmx)")
    start_timeout_s: float = Field(60.0, gt=0, description="How long `stack up` waits for health")
    prometheus: bool = Field(True, description="`stack up` also runs Prometheus (monitoring.prometheus_url)")


class Settings(BaseSettings):
    """All of streamscore's configuration; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_file=".env",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicSettings = TopicSettings()
    input: InputSettings = InputSettings()
    stack: StackSettings = StackSettings()
    features: FeatureSettings = FeatureSettings()
    model: ModelSettings = ModelSettings()
    training: TrainingSettings = TrainingSettings()
    inference: InferenceSettings = InferenceSettings()
    drift: DriftSettings = DriftSettings()
    retrain: RetrainSettings = RetrainSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    schema_registry_url: str | None = Field(
        None, description="Confluent-compatible registry; unset = Avro single-object encoding"
    )
    data_dir: Path = Field(
        default_factory=lambda: _xdg("XDG_DATA_HOME", ".local/share"),
        description="Broker/Redis data, logs, registry, models (default ~/.local/share/streamscore)",
    )
    cache_dir: Path = Field(
        default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache"),
        description="Downloaded Kafka jars (default ~/.cache/streamscore)",
    )
    metrics_port: int = Field(
        9300, ge=0, lt=65536, description="Prometheus /metrics port; 0 = off; taken, the next free one above it"
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address /metrics listens on (0.0.0.0 in a container, for Prometheus to reach it)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Python log level")

    @field_validator("schema_registry_url")
    @classmethod
    def _check_registry(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if urlparse(value).scheme not in ("http", "https", "mock"):
            raise ValueError(f"must be an http(s):// URL, got {value!r}")
        return value


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    env_name = ENV_PREFIX + ENV_NESTED_DELIMITER.join(loc).upper()
    value = first.get("input")
    shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
    more = f"; {exc.error_count() - 1} more problem(s)" if exc.error_count() > 1 else ""
    return f"invalid setting {'.'.join(loc) or '?'} [{env_name}]{shown}: {first['msg']}{more}"


def _describe_unparsable(exc: SettingsError) -> str:
    # pydantic-settings names the section ('error parsing value for field "kafka"'), not the variable.
    section = str(exc).split('"')[1] if '"' in str(exc) else ""
    json_fields = [
        f"{ENV_PREFIX}{section}{ENV_NESTED_DELIMITER}{name}".upper()
        for name, field in getattr(Settings.model_fields.get(section), "annotation", BaseModel).model_fields.items()
        if "dict" in str(field.annotation)
    ]
    offending = [name for name in json_fields if name in {k.upper() for k in os.environ}]
    shown = offending[0] if offending else f"{ENV_PREFIX}{section.upper()}{ENV_NESTED_DELIMITER}*"
    return f'invalid setting {shown}: not valid JSON (it takes a JSON object, e.g. \'{{"acks": "all"}}\')'


def env_names() -> dict[str, str]:
    """Every environment variable the settings read, mapped to its dotted field path."""
    names: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        names[f"{ENV_PREFIX}{name}".upper()] = name
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            for sub in section.model_fields:
                names[f"{ENV_PREFIX}{name}{ENV_NESTED_DELIMITER}{sub}".upper()] = f"{name}.{sub}"
    return names


def _env_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``STREAMSCORE_*`` variables from which :func:`~streamscore.settings.load_settings` rebuilds ``settings``.

    Unset optional fields are left out (their default is "unset" too). Secrets are included in clear text: the
    result is meant for a child process's or a module import's environment, never for a log.
    """
    env: dict[str, str] = {}

    def put(name: str, value: Any) -> None:
        shown = _env_value(value)
        if shown is not None:
            env[name.upper()] = shown

    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            for sub in type(value).model_fields:
                put(f"{ENV_PREFIX}{name}{ENV_NESTED_DELIMITER}{sub}", getattr(value, sub))
        else:
            put(f"{ENV_PREFIX}{name}", value)
    return env


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of a child process that must run with exactly ``settings``: this process's environment
    without any ``STREAMSCORE_*`` variable of its own, plus :func:`settings_env`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env.update(settings_env(settings))
    return env


# Settings that moved to a section of their own, so that an old deployment's variable fails with its new name.
_RENAMED = {
    f"{ENV_PREFIX}INFERENCE{ENV_NESTED_DELIMITER}{old}".upper(): f"{ENV_PREFIX}DRIFT{ENV_NESTED_DELIMITER}{new}".upper()
    for old, new in (("drift_interval_s", "interval_s"), ("drift_psi_threshold", "psi_threshold"),
                     ("drift_wasserstein_threshold", "wasserstein_threshold"),
                     ("drift_missing_threshold", "missing_threshold"), ("drift_min_count", "min_count"),
                     ("drift_detector", "detector"), ("labels", "labels"))
} | {
    f"{ENV_PREFIX}FEATURES{ENV_NESTED_DELIMITER}SNAPSHOT_INTERVAL_S": f"{ENV_PREFIX}FEATURES{ENV_NESTED_DELIMITER}"
    "CHECKPOINT_INTERVAL_S"
}  # fmt: skip


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment, turning validation errors into one clear ConfigError.

    An unknown ``STREAMSCORE_*`` variable is an error too: a typo must not silently fall back to a default.
    """
    known = env_names()
    unknown = sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)
    if unknown:
        moved = _RENAMED.get(unknown[0].upper())
        if moved is not None:
            raise ConfigError(f"setting {unknown[0]} is now {moved}")
        raise ConfigError(f"unknown setting {unknown[0]}: not one of streamscore's settings (docs/configuration.md)")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:  # a nested field's value that is not JSON (STREAMSCORE_KAFKA__EXTRA=acks=all)
        raise ConfigError(_describe_unparsable(exc)) from None


def _shown_default(field: FieldInfo) -> Any:
    value = field.get_default(call_default_factory=True)
    # Paths under the home directory differ per machine: the description says the default instead.
    return None if isinstance(value, Path) or value == {} else value


def _fields() -> list[tuple[str, Any, str]]:
    """(env var, default, description) of every leaf setting, in declaration order."""
    rows: list[tuple[str, Any, str]] = []
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            for sub, subfield in section.model_fields.items():
                env = f"{ENV_PREFIX}{name}{ENV_NESTED_DELIMITER}{sub}".upper()
                rows.append((env, _shown_default(subfield), subfield.description or ""))
        else:
            rows.append((f"{ENV_PREFIX}{name}".upper(), _shown_default(field), field.description or ""))
    return rows


def settings_markdown() -> str:
    """The README's configuration table; a test keeps the README equal to this."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for env, default, description in _fields():
        shown = "" if default is None else f"`{default}`"
        lines.append(f"| `{env}` | {shown} | {description} |")
    return "\n".join(lines) + "\n"
