"""The servers of the local stack: Apache Kafka (KRaft, jars from Maven Central) and Redis (Debian).

Each component knows how to prepare itself (fetch, configure, format), the command that runs it, and how to
tell that it is healthy by asking it as a client would: a metadata request for Kafka, PING for Redis.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from abc import ABC, abstractmethod
from importlib import resources
from pathlib import Path

import httpx
import redis
import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streamscore.errors import StreamscoreError
from streamscore.kafka.config import admin_config
from streamscore.settings import Settings

__all__ = ["Component", "KafkaComponent", "PrometheusComponent", "RedisComponent", "StackError"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class StackError(StreamscoreError):
    """The stack could not be brought up or down; the message says what to look at."""


def _require_tool(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"{tool} not found on PATH: {hint}")
    return path


class Component(ABC):
    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.data_dir / self.name
        self.log = settings.data_dir / "logs" / f"{self.name}.log"

    @property
    @abstractmethod
    def address(self) -> str: ...

    @property
    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def prepare(self) -> None:
        """Install, configure and initialise; idempotent and cheap when already done."""

    @abstractmethod
    def argv(self) -> list[str]: ...

    @abstractmethod
    def probe(self, timeout_s: float) -> str | None:
        """The server's version if it answers as a client would ask it, else None."""

    def check_local(self, host: str) -> None:
        if host not in LOOPBACK:
            raise StackError(
                f"the local stack binds to loopback only, but {self.name} is configured at {self.address}; "
                "point the setting at 127.0.0.1 or run against your own cluster without `stack up`"
            )


class KafkaComponent(Component):
    """Single-node KRaft broker+controller, plain text on loopback."""

    name = "kafka"

    @property
    def address(self) -> str:
        host, port = self.settings.kafka.first_broker
        return f"{host}:{port}"

    @property
    def version(self) -> str:
        return self.settings.stack.kafka_version

    @property
    def libs(self) -> Path:
        return self.settings.cache_dir / f"kafka-{self.version}" / "libs"

    def fetch_jars(self) -> Path:
        """Resolve the broker and its runtime dependencies from Maven Central into the cache, once."""
        marker = self.libs.parent / ".complete"
        if marker.exists():
            return self.libs
        mvn = _require_tool("mvn", "install Maven (`make install` does: apt-get install maven)")
        staging = self.libs.parent / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        pom = resources.files("streamscore.stack") / "kafka-pom.xml"
        with resources.as_file(pom) as pom_path:
            result = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(pom_path),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-Dkafka.version={self.version}",
                    f"-DoutputDirectory={staging}",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
        if result.returncode != 0 or not any(staging.glob(f"kafka_2.13-{self.version}.jar")):
            tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
            raise StackError(f"could not fetch Kafka {self.version} jars with Maven: {' | '.join(tail)}")
        shutil.rmtree(self.libs, ignore_errors=True)
        staging.rename(self.libs)
        marker.write_text(self.version)
        return self.libs

    def _server_properties(self) -> str:
        host, port = self.settings.kafka.first_broker
        cport = self.settings.stack.kafka_controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{host}:{cport}",
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.root / "data"),
            "num.partitions": str(self.settings.topics.partitions),
            # One broker: internal topics cannot have more replicas, or transactions and groups fail.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def prepare(self) -> None:
        host, _ = self.settings.kafka.first_broker
        self.check_local(host)
        if self.settings.kafka.security_protocol != "PLAINTEXT":
            raise StackError("the local stack runs Kafka in PLAINTEXT; unset STREAMSCORE_KAFKA__SECURITY_PROTOCOL")
        _require_tool("java", "install a JDK 17+ (`make install` does: apt-get install default-jre-headless)")
        self.fetch_jars()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "server.properties").write_text(self._server_properties())
        (self.root / "log4j.properties").write_text(
            "log4j.rootLogger=INFO, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka.request.logger=WARN\n"
            "log4j.logger.state.change.logger=WARN\n"
        )
        if not (self.root / "data" / "meta.properties").exists():
            self._format()

    def _java(self, main: str, *args: str, heap: str | None = None) -> list[str]:
        java = _require_tool("java", "install a JDK 17+")
        opts = [f"-Xmx{heap}", f"-Xms{heap}"] if heap else []
        return [
            java,
            *opts,
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.root / 'log4j.properties'}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def _format(self) -> None:
        while True:
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            if not cluster_id.startswith("-"):  # Kafka's own rule: ids must not look like a flag
                break
        argv = self._java(
            "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.root / "server.properties")
        )
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed: {(result.stdout + result.stderr).strip()[-500:]}")

    def argv(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.root / "server.properties"), heap=self.settings.stack.kafka_heap)

    def probe(self, timeout_s: float) -> str | None:
        # A probe expects "connection refused" while the broker starts: keep librdkafka quiet about it.
        quiet = {"socket.connection.setup.timeout.ms": 1000, "log_level": 0}
        admin = AdminClient(admin_config(self.settings.kafka, **quiet))
        try:
            meta = admin.list_topics(timeout=timeout_s)
        except KafkaException:
            return None
        return "unknown" if meta.brokers else None


class RedisComponent(Component):
    """Redis from Debian's package, AOF with fsync every second: at most a second of writes at risk."""

    name = "redis"

    @property
    def address(self) -> str:
        return f"{self.settings.redis.host}:{self.settings.redis.port}"

    @property
    def version(self) -> str:
        server = _require_tool("redis-server", "install it (`make install` does: apt-get install redis-server)")
        out = subprocess.run([server, "--version"], capture_output=True, text=True, check=False).stdout
        for part in out.split():
            if part.startswith("v="):
                return part[2:]
        return "unknown"

    @property
    def conf(self) -> Path:
        return self.root / "redis.conf"

    def prepare(self) -> None:
        self.check_local(self.settings.redis.host)
        if self.settings.redis.tls:
            raise StackError("the local stack runs Redis without TLS; use a redis:// URL")
        _require_tool("redis-server", "install it (`make install` does: apt-get install redis-server)")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        lines = [
            f"bind {self.settings.redis.host}",
            f"port {self.settings.redis.port}",
            f"dir {self.root / 'data'}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "daemonize no",
            "protected-mode yes",
        ]
        if self.settings.redis.password is not None:
            # In a 0600 file rather than on the command line, where `ps` would show it.
            lines.append(f"requirepass {self.settings.redis.password.get_secret_value()}")
        self.conf.touch(mode=0o600)
        self.conf.write_text("\n".join(lines) + "\n")

    def argv(self) -> list[str]:
        return [_require_tool("redis-server", "install it"), str(self.conf)]

    def client(self, timeout_s: float = 2.0) -> redis.Redis[bytes]:
        r = self.settings.redis
        return redis.Redis.from_url(
            r.url,
            password=r.password.get_secret_value() if r.password else None,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )

    def probe(self, timeout_s: float) -> str | None:
        try:
            with self.client(timeout_s) as client:
                client.ping()
                return str(client.info("server").get("redis_version", "unknown"))
        except redis.RedisError:
            return None


class PrometheusComponent(Component):
    """Prometheus from Debian's package, scraping every streamscore service on this host.

    Services are not listed in the config: each one writes a ``file_sd`` target file when its /metrics
    server starts (``streamscore.exporter``), and Prometheus watches that directory, so a service
    started later, a second worker on the next free port, or the retrainer is scraped without a restart.
    """

    name = "prometheus"

    @property
    def address(self) -> str:
        m = self.settings.monitoring
        return f"{m.prometheus_host}:{m.prometheus_port}"

    @property
    def version(self) -> str:
        binary = _require_tool("prometheus", "install it (`make install` does: apt-get install prometheus)")
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
        words = (out.stdout + out.stderr).split()
        return words[words.index("version") + 1].split("+")[0] if "version" in words else "unknown"

    @property
    def config(self) -> Path:
        return self.root / "prometheus.yml"

    def scrape_config(self) -> dict[str, object]:
        from streamscore.exporter import targets_dir

        interval = f"{self.settings.monitoring.scrape_interval_s:g}s"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": "streamscore",
                    "file_sd_configs": [
                        {"files": [str(targets_dir(self.settings) / "*.json")], "refresh_interval": interval}
                    ],
                },
                {"job_name": "prometheus", "static_configs": [{"targets": [self.address]}]},
            ],
        }

    def prepare(self) -> None:
        from streamscore.exporter import targets_dir

        self.check_local(self.settings.monitoring.prometheus_host)
        _require_tool("prometheus", "install it (`make install` does: apt-get install prometheus)")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        targets_dir(self.settings).mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(self.scrape_config(), sort_keys=False))

    def argv(self) -> list[str]:
        return [
            _require_tool("prometheus", "install it"),
            f"--config.file={self.config.resolve()}",
            f"--storage.tsdb.path={(self.root / 'data').resolve()}",
            f"--storage.tsdb.retention.time={self.settings.monitoring.retention}",
            f"--web.listen-address={self.address}",
            "--web.enable-lifecycle",
        ]

    def probe(self, timeout_s: float) -> str | None:
        url = self.settings.monitoring.prometheus_url
        try:
            ready = httpx.get(f"{url}/-/ready", timeout=timeout_s)
            if ready.status_code != 200:
                return None
            info = httpx.get(f"{url}/api/v1/status/buildinfo", timeout=timeout_s).json()
        except (httpx.HTTPError, ValueError):
            return None
        return str(info.get("data", {}).get("version", "unknown"))
