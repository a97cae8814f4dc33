"""The loop closed end to end: drift → drift reports → retrain on the recent window → gate → promotion →
predictions from the new version. Real broker, Redis, Feast, MLflow; the processor, a worker and the
retrainer run as the CLI runs them, in their own processes."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any

import pytest

from streamscore.features import backfill, load_plans, rules_for
from streamscore.generator import GeneratorConfig, generate, produce_to_kafka, start_ending_by, write_parquet
from streamscore.kafka import Consumer, ensure_topics, group_lag
from streamscore.models import Registry
from streamscore.retrain import decisions
from streamscore.serde import Serde
from streamscore.settings import Settings, child_env
from streamscore.store import OnlineWriter, apply_definitions
from streamscore.training import train

pytestmark = pytest.mark.integration

HISTORY, DRIFTED, AFTER = 12_000, 12_000, 600
# The buffer is a fraction of the window (~24k transactions with its warm-up): the export spills to disk.
RETRAIN = {"min_reports": 3, "min_drifted_features": 3, "window_h": 1.0, "cooldown_s": 3600.0, "buffer_rows": 2000}
POPULATION = {"users": 300, "merchants": 60, "fraud_rate": 0.03, "seed": 3, "rate": 2.0}


def _isolated(settings: Settings, data_dir: Path) -> Settings:
    tag = uuid.uuid4().hex[:8]
    names = ("transactions", "transactions_by_merchant", "score_requests", "predictions", "drift", "dead_letters")
    topics = settings.topics.model_copy(update={n: f"{n}-{tag}" for n in names})
    s = settings.model_copy(
        update={
            "data_dir": data_dir,
            "topics": topics,
            "redis": settings.redis.model_copy(update={"url": settings.redis.url.rsplit("/", 1)[0] + "/8"}),
            "features": settings.features.model_copy(update={"group_id": f"features-{tag}"}),
            "inference": settings.inference.model_copy(
                update={"group_id": f"inference-{tag}", "reload_interval_s": 1.0}
            ),
            "drift": settings.drift.model_copy(update={"interval_s": 2.0}),
            "retrain": settings.retrain.model_copy(update=RETRAIN | {"group_id": f"retrain-{tag}"}),
        }
    )
    ensure_topics(s)  # with the declared partition counts: the processor forwards by merchant across them
    return s


def _spawn(s: Settings, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = child_env(s)
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "streamscore", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def _wait_for(proc: subprocess.Popen[bytes], log: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in {log} within {timeout_s}s"
        time.sleep(0.2)


@pytest.fixture
def procs() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    running: dict[str, subprocess.Popen[bytes]] = {}
    yield running
    for proc in running.values():
        proc.terminate()
    for proc in running.values():
        proc.wait(60)


def test_drift_retrains_promotes_and_the_new_version_serves(
    settings: Settings, tmp_path: Path, procs: dict[str, subprocess.Popen[bytes]]
) -> None:
    s = _isolated(settings, tmp_path)
    apply_definitions(s)
    # The phase of the day is pinned (the latest 08:00 UTC start that ends before now): the daily cycle decides
    # how many frauds fall in each training window, so the stream must not depend on the hour this runs at.
    undrifted = GeneratorConfig(events=HISTORY + DRIFTED + AFTER, **POPULATION)  # type: ignore[arg-type]
    start = start_ending_by(undrifted, datetime.now(tz=UTC) - timedelta(minutes=1), time_of_day=dt_time(8))
    undrifted = replace(undrifted, start=start)
    times = sorted(t["event_time"] for chunk in generate(undrifted) for t in chunk)
    drift_at, after = times[HISTORY], times[HISTORY + DRIFTED]
    stream = GeneratorConfig(events=HISTORY + DRIFTED + AFTER, start=start, drift_at=drift_at, **POPULATION)  # type: ignore[arg-type]

    # The champion: trained by `streamscore train` on the history, before the drift.
    events = tmp_path / "stream.parquet"
    write_parquet(stream, events)
    plans = load_plans(s)
    with OnlineWriter(s) as writer:

        def online(plan: Any, ids: list[str], values: Any, event_ms: Any) -> None:
            writer.write(plan.name, ids, {n: values[:, j] for j, n in enumerate(plan.feature_names)}, event_ms)

        backfill(events, plans, s.data_dir / "offline", start=start, end=drift_at, rules=rules_for(s, plans),
                 online=online)  # fmt: skip
    first = train(s, events=events, start=start, end=drift_at, seed=0)
    assert first.promoted, first.gate.reasons
    produce_to_kafka(stream, s, where=lambda r: r["event_time"] < drift_at)  # the log the processor replays

    for name, args, ready in (("features", ["features", "run"], "feature processor"),
                              ("inference", ["inference", "run"], "serving"),
                              ("retrain", ["retrain-on-drift"], "watching")):  # fmt: skip
        procs[name] = _spawn(s, args, tmp_path / f"{name}.log")
        _wait_for(procs[name], tmp_path / f"{name}.log", ready, timeout_s=120)
    deadline = time.monotonic() + 120
    while group_lag(s.kafka, s.features.group_id, [s.topics.transactions]) > 0:
        assert time.monotonic() < deadline, "the processor did not catch up on the history"
        time.sleep(0.5)

    # Drifted traffic, each transaction behind its score request: drift reports flag it, the retrainer acts.
    produce_to_kafka(stream, s, requests=True, wall_rate=1000, where=lambda r: drift_at <= r["event_time"] < after)
    deadline = time.monotonic() + 300
    while not [d for d in decisions(s) if d.kind != "triggered"]:
        assert procs["retrain"].poll() is None, (tmp_path / "retrain.log").read_text()[-3000:]
        assert time.monotonic() < deadline, (tmp_path / "retrain.log").read_text()[-3000:]
        time.sleep(1)
    steps = decisions(s)
    assert [d.kind for d in steps] == ["triggered", "promoted"], steps
    assert "drifted reports in a row about v" + str(first.version) in steps[0].detail
    new = steps[1].version
    assert new is not None
    assert new > first.version
    champion = Registry(s).champion()
    assert champion is not None
    assert champion.version == new
    run = Registry(s).runs({"streamscore.kind": "retrain"})[0]  # the decision, logged to MLflow
    assert run.data.tags["streamscore.outcome"] == "promoted"
    assert run.data.tags["streamscore.version"] == str(new)

    # The worker hot-reloads the new champion: the next requests are scored by it.
    _wait_for(procs["inference"], tmp_path / "inference.log", f"serving {s.model.name} v{new}", timeout_s=60)
    produce_to_kafka(stream, s, requests=True, where=lambda r: r["event_time"] >= after)
    wanted = {t["event_id"] for chunk in generate(stream) for t in chunk if t["event_time"] >= after}
    serde, seen = Serde("prediction"), {}
    with Consumer(s.kafka, f"reader-{uuid.uuid4().hex}", [s.topics.predictions]) as consumer:
        deadline = time.monotonic() + 60
        while not wanted <= seen.keys() and time.monotonic() < deadline:
            for msg in consumer.poll_batch(2000, 0.5):
                record = serde.decode(msg.value())
                if record["request_id"] in wanted:
                    seen[record["request_id"]] = record["model_version"]
    assert wanted <= seen.keys(), f"{len(wanted - seen.keys())} requests got no prediction"
    assert set(seen.values()) == {str(new)}
