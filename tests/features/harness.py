"""Run the real feature processor (`python -m streamscore features run`) against the test stack."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaException

from streamscore.kafka import group_lag
from streamscore.settings import Settings, child_env

ROOT = Path(__file__).resolve().parents[2]


class ProcessorProcess:
    """The processor in a child process; ``log`` collects its output for failure messages."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProcessorProcess:
        env = child_env(self.settings)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamscore", "features", "run"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def freeze(self) -> None:
        """SIGSTOP: it stays exactly where it is (nothing applied, written or committed) until killed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """kill -9: no snapshot, no commit, no goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> ProcessorProcess:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def isolated_run(base: Settings, data_dir: Path, name: str, *, redis_db: int, **features: Any) -> Settings:
    """Settings of one processor run: its own topics, consumer group, Redis database and data directory,
    so runs sharing a stack never see each other's messages, offsets or online rows."""
    topics = base.topics.model_copy(
        update={
            "transactions": f"tx-{name}",
            "transactions_by_merchant": f"tx-by-merchant-{name}",
            "dead_letters": f"dlq-{name}",
        }
    )
    redis_url = base.redis.url.rsplit("/", 1)[0] + f"/{redis_db}"
    return base.model_copy(
        update={
            "topics": topics,
            "data_dir": data_dir,
            "redis": base.redis.model_copy(update={"url": redis_url}),
            "features": base.features.model_copy(update={"group_id": f"features-{name}", **features}),
        }
    )


def lag(settings: Settings, topics: list[str]) -> int:
    """Messages not yet committed by the processor's group (committed = covered by a snapshot, so zero lag
    means every event is applied, written online, and recoverable)."""
    return group_lag(settings.kafka, settings.features.group_id, topics)


def wait_caught_up(settings: Settings, proc: ProcessorProcess, timeout_s: float = 240.0) -> float:
    """Wait until the processor committed everything on both topics; returns the seconds it took."""
    topics = [settings.topics.transactions, settings.topics.transactions_by_merchant]
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not proc.alive():
            raise AssertionError(f"processor exited ({proc.proc and proc.proc.returncode}):\n{proc.tail()}")
        try:
            if lag(settings, topics) == 0:
                return time.monotonic() - started
        except KafkaException:
            pass  # the group coordinator is still loading: ask again

        time.sleep(0.5)
    raise AssertionError(f"processor still behind after {timeout_s}s (lag {lag(settings, topics)}):\n{proc.tail()}")
