"""The Locust load test at steady total rates: the pipeline's round trip against Kafka's own, same plumbing.

``python -m tests.benchmarks locust``. Runs against a Kafka + Redis of its own with the inference benchmark's
model (an MLP of the default training shape, drift monitoring on) and 10k users' and 1k merchants' features
online, served by one worker process (``streamscore inference run``). Each rate runs ``loadtest/locustfile.py``
headless twice, each in a Locust process of its own:

* **bare Kafka** (``--echo``): a score request is produced and the same message consumed back from its topic,
  no worker: what the transport and the load generator cost (the baseline);
* **pipeline**: the score request goes to the worker, which reads the features from Redis, scores and
  publishes the prediction that Locust consumes.

Locust's own CSV gives the achieved rate and the percentiles, so the table shows what the pipeline adds over
the transport, at the same rate, in the same run, on the same cores.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamscore.settings import Settings
from tests.benchmarks.bench_reader import MERCHANTS, USERS, write_entities
from tests.benchmarks.features_common import bench_stack, isolated, say, start_worker

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtest" / "locustfile.py"
RATES = (250, 500, 1_000)  # total requests/s; 2,000 is past what one Locust process sustains on 2 shared cores
PER_USER = 10  # requests/s per simulated user: a 100 ms period, far above the round trip, so the rate holds
SECONDS = 20
WARMUP_SECONDS = 6
TIMEOUT_S = 5.0
PATHS = {"echo": "bare Kafka round trip (baseline)", "score": "pipeline: request, worker, prediction"}


@dataclass
class Result:
    path: str  # "echo" or "score": the Locust request name
    rate: int
    users: int
    requests: int
    failures: int
    achieved: float
    p50: float
    p95: float
    p99: float


def _env(settings: Settings) -> dict[str, str]:
    from streamscore.settings import child_env

    env = {k: v for k, v in child_env(settings).items() if not k.upper().startswith("LOCUST_")}
    env["STREAMSCORE_METRICS_PORT"] = "0"
    return env


def _locust(settings: Settings, path: str, rate: int, seconds: float, out: Path) -> Result:
    """One headless Locust run; its ``*_stats.csv`` row for ``path``."""
    users = max(rate // PER_USER, 1)
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(users),
        "-t", f"{seconds:g}s", "--csv", str(out / "locust"), "--only-summary", "--rate", str(rate),
        "--score-timeout", str(TIMEOUT_S), "--user-id-format", "user-{}", "--id-users", str(USERS),
        "--merchant-id-format", "merchant-{}", "--id-merchants", str(MERCHANTS),
        *(["--echo"] if path == "echo" else []), "ScoreRequestUser",
    ]  # fmt: skip
    done = subprocess.run(command, env=_env(settings), capture_output=True, text=True, timeout=seconds + 120)
    stats = out / "locust_stats.csv"
    if not stats.exists():
        raise RuntimeError(f"locust wrote no statistics (exit {done.returncode}): {done.stderr[-3000:]}")
    with stats.open(newline="") as f:
        row = next((r for r in csv.DictReader(f) if r["Name"] == path), None)
    if row is None:
        raise RuntimeError(f"no {path!r} requests in {stats} (exit {done.returncode}): {done.stderr[-3000:]}")
    return Result(
        path=path, rate=rate, users=users, requests=int(row["Request Count"]), failures=int(row["Failure Count"]),
        achieved=float(row["Requests/s"]), p50=float(row["50%"]), p95=float(row["95%"]), p99=float(row["99%"]),
    )  # fmt: skip


def measure(settings: Settings, echo: Settings, out: Path) -> list[Result]:
    """A dropped warm-up of both paths, then every rate, the two paths in alternating order (ABBA...)."""
    worker = start_worker(settings, "locust-worker", _env(settings))
    try:
        for path, s in (("score", settings), ("echo", echo)):
            say(f"locust: warm-up, {path} at {RATES[0]}/s for {WARMUP_SECONDS} s")
            _locust(s, path, RATES[0], WARMUP_SECONDS, out / f"warmup-{path}")
        results = []
        for i, rate in enumerate(RATES):
            for path in ("echo", "score") if i % 2 == 0 else ("score", "echo"):
                say(f"locust: {path} at {rate:,}/s for {SECONDS} s")
                results.append(
                    _locust(settings if path == "score" else echo, path, rate, SECONDS, out / f"{path}-{rate}")
                )
    finally:
        worker.terminate()
        worker.wait(60)
    return results


def markdown(results: list[Result]) -> str:
    baseline = {r.rate: r for r in results if r.path == "echo"}
    rows = []
    for r in sorted(results, key=lambda r: (r.rate, r.path != "echo")):
        base = baseline[r.rate]
        rows.append(
            f"| {r.rate:,} | {r.users} | {PATHS[r.path]} | {r.achieved:,.0f} | {r.failures:,} of {r.requests:,} | "
            f"{r.p50:.0f} | {r.p95:.0f} | {r.p99:.0f} | {r.p50 / base.p50:.1f}x | {r.p99 / base.p99:.1f}x |"
        )
    return "\n".join(
        [
            "### Load test through Kafka (Locust, end-to-end round trip in ms, one worker)",
            "",
            "| requests/s asked | users | round trip | requests/s achieved | failures | p50 | p95 | p99 | "
            "p50 vs Kafka | p99 vs Kafka |",
            "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            f"`loadtest/locustfile.py` headless, {SECONDS} s per run after a dropped warm-up of each path; "
            f"{PER_USER} requests/s per simulated user (`constant_throughput`), all in one Locust process, the two "
            "paths in alternating order. The round trip runs from just before `produce()` to the moment Locust's "
            "pump greenlet consumes the answer: for the pipeline the prediction (worker: batches of up to 256, "
            "`max_delay_ms` 5, features from Redis, ONNX, acknowledged publish), for the baseline the request "
            "itself read back from its topic. Same producer (`acks=all`, idempotent, `linger.ms` 1) and consumer in "
            f"both; a request without an answer in {TIMEOUT_S:g} s is a failure. Locust keeps response times to "
            "the millisecond below 100 ms and to 10 ms above. The broker, Redis, the worker and Locust share the "
            "2 cores.",
            "",
        ]
    )


def run(parts: Iterable[str] | None = None) -> str:
    if parts:
        raise SystemExit(f"the locust benchmark has no parts, got {sorted(parts)}")
    from streamscore.kafka import ensure_topics
    from streamscore.models import Registry
    from streamscore.store import apply_definitions
    from tests.benchmarks.bench_inference import _register

    with bench_stack() as (base, tmp):
        settings = isolated(base, tmp, "locust", redis_db=3)
        settings = settings.model_copy(
            update={
                "topics": settings.topics.model_copy(
                    update={"score_requests": "lt-requests", "predictions": "lt-predictions"}
                ),
                "inference": settings.inference.model_copy(update={"labels": False, "group_id": "lt-inference"}),
            }
        )
        echo = settings.model_copy(update={"topics": settings.topics.model_copy(update={"score_requests": "lt-echo"})})
        ensure_topics(settings)
        ensure_topics(echo)
        apply_definitions(settings)
        say("locust: writing features, registering the model")
        write_entities(settings, np.random.default_rng(11))
        monitored, _unmonitored = _register(settings)
        Registry(settings).promote(monitored, reason="bench")
        return markdown(measure(settings, echo, tmp / "locust-runs"))  # bench_stack removes tmp


if __name__ == "__main__":
    print(run())
