"""Shared pieces of the feature-stage benchmarks: an isolated stack, per-run settings, pre-encoded traffic,
child processes and Prometheus scraping. Nothing here measures anything by itself."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from streamscore.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
_T0 = time.monotonic()


class ChildFailed(RuntimeError):
    """The timed step raised in its child process; the message is its exception, in one line."""


def _report_failure(target: Callable[..., None], args: tuple[Any, ...], conn: Connection) -> None:
    try:
        target(*args, conn)
    except BaseException as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}".splitlines()[0]))
        raise


def seconds_in_child(
    name: str,
    target: Callable[..., None],
    args: tuple[Any, ...],
    limit_s: float | None,
    *,
    ready_s: float | None = None,
) -> float | None:
    """Run ``target(*args, conn)`` in a spawned process (no fork of a process holding DuckDB's threads) and
    return the seconds it sends back, or None when they do not come within ``limit_s``; the child is then
    stopped. With ``ready_s``, the child first sends "ready" (its warm-up done) within that many seconds.
    A child that raises is :class:`ChildFailed`, as soon as it does."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_report_failure, args=(target, args, theirs))
    child.start()
    theirs.close()  # the child's end: once the child is gone, a read here ends instead of waiting out the limit

    def receive() -> Any:
        try:
            got = ours.recv()
        except EOFError:
            child.join()
            raise ChildFailed(f"{name}: the child exited ({child.exitcode}) without an answer") from None
        if isinstance(got, tuple) and got[:1] == ("failed",):
            raise ChildFailed(f"{name}: {got[1]}")
        return got

    try:
        if ready_s is not None and (not ours.poll(ready_s) or receive() != "ready"):
            raise RuntimeError(f"{name}: the warm-up did not finish")
        if not ours.poll(limit_s):
            return None
        seconds: float = receive()
        child.join()
        return seconds
    finally:
        if child.is_alive():
            child.terminate()
            child.join()


def backfilled_history(settings: Settings, events: int, span: timedelta) -> tuple[datetime, int]:
    """``events`` transactions over ``span`` (a user per 50, a merchant per 500) written to
    ``data_dir/events.parquet`` and backfilled into ``data_dir/offline`` with the project's definitions,
    registered first; returns (the history's start, offline rows of both views)."""
    import pyarrow.parquet as pq

    from streamscore.features import backfill, load_plans, rules_for
    from streamscore.generator import GeneratorConfig, write_parquet
    from streamscore.store import apply_definitions

    root = settings.data_dir
    apply_definitions(settings)
    config = GeneratorConfig(
        events=events,
        rate=events / span.total_seconds(),
        seed=1,
        users=max(100, events // 50),
        merchants=max(30, events // 500),
    )
    write_parquet(config, root / "events.parquet")
    plans = load_plans(settings)
    rules = rules_for(settings, plans)
    backfill(root / "events.parquet", plans, root / "offline", start=config.start, end=config.start + span, rules=rules)
    return config.start, sum(pq.ParquetFile(path).metadata.num_rows for path in (root / "offline").glob("*.parquet"))


def say(message: str) -> None:
    """Progress on stderr (stdout is the Markdown)."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    from tests.conftest import free_port as _free_port

    return _free_port()


@contextmanager
def bench_stack() -> Iterator[tuple[Settings, Path]]:
    """A Kafka + Redis of our own (free loopback ports, a throwaway directory), stopped and wiped at the end."""
    from streamscore.stack import Stack
    from tests.conftest import stack_settings  # also drops the caller's STREAMSCORE_* variables

    tmp = Path(tempfile.mkdtemp(prefix="streamscore-bench-"))
    settings = stack_settings(tmp / "stack", stack={"kafka_controller_port": free_port(), "kafka_heap": "512m"})
    stack = Stack(settings, on_event=lambda m: say(f"stack: {m}"))
    try:
        stack.up()
        yield settings, tmp
    finally:
        say("stack: stopping")
        try:
            stack.down(wipe=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def isolated(
    base: Settings, tmp: Path, name: str, *, redis_db: int, metrics: bool = False, **features: Any
) -> Settings:
    """The tests' isolated run settings, in ``tmp/<name>``, with a metrics port when asked."""
    from tests.features.harness import isolated_run

    data_dir = tmp / name
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = isolated_run(base, data_dir, name, redis_db=redis_db, **features)
    return settings.model_copy(update={"metrics_port": free_port() if metrics else 0})


def start_worker(settings: Settings, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`streamscore inference run` in a process of its own, as deployed (a client in the benchmark process must
    not share its interpreter lock), returned once it has joined its group; its log in ``data_dir/NAME.log``.
    ``env`` defaults to the environment of ``settings``."""
    from streamscore.settings import child_env

    log = settings.data_dir / f"{name}.log"
    with log.open("ab") as out:
        worker = subprocess.Popen([sys.executable, "-m", "streamscore", "inference", "run"],
                                  env=env if env is not None else child_env(settings),
                                  stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 120
    while b"in group" not in log.read_bytes():
        if worker.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            raise RuntimeError(f"the inference worker did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return worker


def prepare(settings: Settings) -> None:
    """Topics and the Feast registry of a run (what `topics create` + `features apply` do)."""
    from streamscore.kafka import ensure_topics
    from streamscore.store import apply_definitions

    ensure_topics(settings)
    apply_definitions(settings)


@dataclass
class Traffic:
    """Generated transactions, Avro-encoded once: value bytes, key bytes and event time (epoch ms)."""

    values: list[bytes]
    keys: list[bytes]
    times_ms: list[int]

    def __len__(self) -> int:
        return len(self.values)


def make_traffic(n: int, *, users: int = 1000, merchants: int = 200, seed: int = 7) -> Traffic:
    """``n`` transactions over the two hours that ended an hour ago (all in the past, so none is "in the
    future"; ~1% out of order and 0.1% late as the generator makes them)."""
    from streamscore.generator import GeneratorConfig, generate
    from streamscore.serde import Serde

    start = datetime.now(tz=UTC).replace(microsecond=0) - timedelta(hours=5)
    config = GeneratorConfig(events=n, users=users, merchants=merchants, seed=seed, start=start, rate=n / 7200)
    serde = Serde("transaction")
    values: list[bytes] = []
    keys: list[bytes] = []
    times: list[int] = []
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    ms = timedelta(milliseconds=1)
    for chunk in generate(config, chunk_size=50_000):
        for record in chunk:
            values.append(serde.encode(record))
            keys.append(record["user_id"].encode())
            times.append((record["event_time"] - epoch) // ms)
    return Traffic(values, keys, times)


def produce(settings: Settings, topic: str, traffic: Traffic, limit: int | None = None) -> float:
    """Send ``traffic`` (keyed by user, Kafka timestamp = event time) and wait for every ack; returns msgs/s."""
    from streamscore.kafka import Producer

    producer = Producer(settings.kafka, client_suffix="bench-load")
    n = len(traffic) if limit is None else min(limit, len(traffic))
    started = time.perf_counter()
    for i in range(n):
        producer.send(topic, traffic.values[i], key=traffic.keys[i], timestamp_ms=traffic.times_ms[i])
    producer.flush(120)
    return n / (time.perf_counter() - started)


class Child:
    """A child process with the settings' environment, its own working directory (faust creates
    ``<app id>-data`` there) and its output in a log file."""

    def __init__(
        self, argv: list[str], settings: Settings, workdir: Path, log: Path, extra_env: dict[str, str]
    ) -> None:
        from streamscore.settings import child_env

        self.log = log
        env = child_env(settings)
        env.update(extra_env)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        workdir.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *argv], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
            )  # fmt: skip

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"child exited ({self.proc.returncode}):\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def processor(settings: Settings, workdir: Path, log: Path) -> Child:
    """`python -m streamscore features run` (what tests/features/harness.py starts, but outside the repo root)."""
    return Child(["-m", "streamscore", "features", "run"], settings, workdir, log, {})


def scrape(port: int, timeout_s: float = 1.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """Every sample of a /metrics page, keyed by (name, sorted labels); None while the endpoint is down."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError:
        return None
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] | None, name: str, **labels: str) -> float:
    if metrics is None:
        return 0.0
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def stack_pids(settings: Settings) -> dict[str, int]:
    """Process ids of the stack's Kafka and Redis (for CPU accounting)."""
    from streamscore.stack import Stack

    return {s.name: s.pid for s in Stack(settings).status() if s.pid is not None}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of a process (threads of the same name summed)."""
    out: dict[str, float] = {}
    tck = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tck
    return out
