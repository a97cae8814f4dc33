"""Shared fixtures. Integration tests get one real Kafka broker and Redis per session, started with the
project's own stack code on free loopback ports and a throwaway data directory, and stopped at the end."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamscore.settings import ENV_PREFIX, Settings
from streamscore.stack import Stack

# Tests build their own settings; a developer's STREAMSCORE_* variables must not leak into them.
for _name in [n for n in os.environ if n.upper().startswith(ENV_PREFIX)]:
    del os.environ[_name]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stack_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for a test stack: its own ports and data, the user's jar cache (fetched once)."""
    kafka_port, controller_port, redis_port = free_port(), free_port(), free_port()
    base: dict[str, object] = {
        "kafka": {"bootstrap_servers": f"127.0.0.1:{kafka_port}"},
        "redis": {"url": f"redis://127.0.0.1:{redis_port}/0"},
        "stack": {"kafka_controller_port": controller_port, "kafka_heap": "384m"},
        "data_dir": data_dir,
        "metrics_port": 0,
        "monitoring": {"prometheus_url": f"http://127.0.0.1:{free_port()}", "scrape_interval_s": 1.0},
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A running Kafka + Redis for the whole session (started on first use)."""
    the_stack = Stack(stack_settings(tmp_path_factory.mktemp("stack")))
    try:
        the_stack.up()
        yield the_stack
    finally:
        the_stack.down(wipe=True)


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    """Settings pointing at the session's running stack, topics created."""
    from streamscore.kafka import ensure_topics

    ensure_topics(stack.settings)
    return stack.settings


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names, so tests never see each other's messages."""
    return uuid.uuid4().hex[:10]
