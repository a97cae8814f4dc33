from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streamscore.stack import Stack, StackError
from streamscore.stack.process import ManagedProcess, PidRecord
from tests.conftest import free_port, stack_settings

ROOT = Path(__file__).resolve().parents[2]


def _cli_env(stack: Stack) -> dict[str, str]:
    s = stack.settings
    return {
        **os.environ,
        "STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "STREAMSCORE_REDIS__URL": s.redis.url,
        "STREAMSCORE_STACK__KAFKA_CONTROLLER_PORT": str(s.stack.kafka_controller_port),
        "STREAMSCORE_DATA_DIR": str(s.data_dir),
        "STREAMSCORE_MONITORING__PROMETHEUS_URL": s.monitoring.prometheus_url,
    }


def test_up_twice_finds_what_runs(stack: Stack) -> None:
    again = stack.up()
    assert [(s.name, s.state) for s in again] == [("kafka", "running"), ("redis", "running"), ("prometheus", "running")]
    pids = {s.name: s.pid for s in stack.status()}
    assert {s.name: s.pid for s in again} == pids


def test_status_json_is_well_formed(stack: Stack) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamscore", "stack", "status", "--json"],
        env=_cli_env(stack), capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == ["kafka", "redis", "prometheus"]
    for row in rows:
        assert set(row) == {"name", "state", "address", "version", "pid", "log"}
        assert row["state"] == "running"
        assert isinstance(row["pid"], int)
        assert Path(f"/proc/{row['pid']}").exists()
        assert row["address"].startswith("127.0.0.1:")
    assert rows[0]["version"] == stack.settings.stack.kafka_version
    assert rows[1]["version"].count(".") == 2
    assert rows[2]["version"].count(".") == 2


def test_down_of_another_stack_leaves_ours_alone(stack: Stack, tmp_path: Path) -> None:
    # A second stack configured on the same ports sees our servers as external and must not stop them.
    other = Stack(stack.settings.model_copy(update={"data_dir": tmp_path}))
    assert {s.state for s in other.status()} == {"external"}
    assert other.up()[0].state == "external"
    assert other.down() == [
        ("prometheus", "not running (ours)"), ("redis", "not running (ours)"), ("kafka", "not running (ours)")
    ]  # fmt: skip
    assert [s.state for s in stack.status()] == ["running", "running", "running"]


def test_pid_file_of_a_reused_pid_is_not_trusted(tmp_path: Path) -> None:
    # Our own pid with a different start time: what a stale pid file looks like after a reboot.
    proc = ManagedProcess("ghost", tmp_path)
    proc.pid_file.write_text(
        json.dumps(PidRecord(os.getpid(), 1, ["x"], "1", "a", "l", 0.0).__dict__)  # start_ticks=1 is not ours
    )
    assert proc.running() is None
    assert proc.stop() is False  # and pytest is still alive to assert it
    assert not proc.pid_file.exists()


def test_failed_start_names_the_log(stack: Stack, tmp_path: Path) -> None:
    # Something that is not Redis holds the Redis port: Redis cannot bind and `up` must say where to look.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = stack.settings.model_copy(
            update={
                "data_dir": tmp_path,
                "redis": stack.settings.redis.model_copy(update={"url": f"redis://127.0.0.1:{port}/0"}),
                "stack": stack.settings.stack.model_copy(update={"start_timeout_s": 20.0}),
            }
        )
        with pytest.raises(StackError) as info:
            Stack(settings).up()
    assert str(tmp_path / "logs" / "redis.log") in str(info.value)
    assert "Address already in use" in (tmp_path / "logs" / "redis.log").read_text()


def test_refuses_non_loopback(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path, redis={"url": f"redis://192.0.2.10:{free_port()}/0"})
    with pytest.raises(StackError, match="loopback"):
        Stack(settings).components[1].prepare()


def test_down_wipe_deletes_data_and_a_new_up_starts_clean(tmp_path: Path) -> None:
    # A private Redis-only lifecycle: start, write, stop keeping data, restart (AOF replays), wipe.
    settings = stack_settings(tmp_path)
    stack = Stack(settings)
    redis = stack.components[1]
    stack.components = [redis]
    assert stack.up()[0].state == "started"
    with redis.client() as client:  # type: ignore[attr-defined]
        client.set("k", "v")
    assert stack.down() == [("redis", "stopped")]
    assert stack.status()[0].state == "stopped"
    stack.up()
    with redis.client() as client:  # type: ignore[attr-defined]
        assert client.get("k") == b"v"
    stack.down(wipe=True)
    assert not redis.root.exists()
