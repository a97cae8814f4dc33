"""Window state at scale: memory per active user, checkpoint cost, restore speed, stage throughput.

Baseline in the same run: the dense layout this one replaced (every entity held all 1,440 tiles and was
snapshotted whole every round), checked out from git at ``BASELINE`` and measured by the same child script
(``state_child.py``). The dense layout is measured at 10k and 100k users only: at 1M it would need ~80 GB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np

from tests.benchmarks.features_common import ROOT, bench_stack, say

BASELINE = "2fb1989"  # the last commit with the dense layout and local snapshot files
PER_USER = 4  # events per user over one day


def _child(services: Path, users: int) -> dict[str, float]:
    say(f"state: {users:,} users on {services}")
    env = {**os.environ, "PYTHONPATH": str(services), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "benchmarks" / "state_child.py"), str(users), str(PER_USER)],
        env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _baseline_tree(tmp: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", BASELINE, "services", "feature_repo", "schemas"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tmp, filter="tar")
    return tmp / "services"


def _memory() -> tuple[str, dict[int, dict[str, float]]]:
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = _baseline_tree(Path(tmp))
        old = {n: _child(old_tree, n) for n in (10_000, 100_000)}
        new = {n: _child(ROOT / "services", n) for n in (10_000, 100_000, 1_000_000)}
    rows = [
        "| layout | users | events | RSS growth per user | vs dense at the same size | stage events/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, results in (("dense (baseline)", old), ("sparse (this tree)", new)):
        for n, r in results.items():
            ratio = f"{old[n]['bytes_per_user'] / r['bytes_per_user']:.0f}x smaller" if n in old else "-"
            rows.append(
                f"| {name} | {n:,} | {int(r['events']):,} | {r['bytes_per_user'] / 1024:,.2f} KB | "
                f"{ratio if name.startswith('sparse') else '1x'} | {r['events_per_s']:,.0f} |"
            )
    snap = old[100_000]
    text = "\n".join(rows) + (
        f"\n\nThe baseline's recovery point at 100k users: one snapshot of the whole state, "
        f"{snap['snapshot_bytes'] / 1e6:,.1f} MB in {snap['snapshot_s'] * 1000:,.0f} ms, every round.\n"
    )
    return text, new


def _checkpoints() -> str:
    from streamscore.features.changelog import StateLog
    from streamscore.features.stages import PartitionState
    from streamscore.features.state import ViewState
    from streamscore.kafka import Producer, ensure_topics, state_topic
    from tests.benchmarks.state_child import _plans

    plan = _plans()[0]
    rows = ["| entities | full write | round with 1% changed: ms | bytes to Kafka | restore | entities/s |"]
    rows.append("|---:|---:|---:|---:|---:|---:|")
    with bench_stack() as (settings, _tmp):
        ensure_topics(settings)
        producer = Producer(settings.kafka, client_suffix="bench-state")
        for n in (100_000, 1_000_000):
            view = ViewState(plan)
            state = PartitionState({plan.name: view}, epoch=f"bench-{n}")
            rng = np.random.default_rng(n)
            ids = [f"u{i:07d}" for i in range(n)]
            t0 = 1_790_000_000_000
            total = n * PER_USER
            for lo in range(0, total, 200_000):  # round robin: every user gets PER_USER events over a day
                seq = np.arange(lo, min(total, lo + 200_000), dtype=np.int64)
                who = seq % n
                view.apply(
                    view.entity_rows([ids[w] for w in who]), t0 + seq * (24 * 3600_000 // total),
                    rng.lognormal(3, 1, (len(seq), 1)), view.value_ids([f"m{w % 5000}" for w in who]), seq,
                )  # fmt: skip
            topic = state_topic(settings, "ingest")
            log = StateLog(settings.kafka, producer, topic, group_id=f"bench-{n}")
            started = time.perf_counter()
            log.write(0, state, topic_id="bench", fingerprint="bench", tombstones={})
            producer.flush()
            full = time.perf_counter() - started
            spent, sent = [], []
            for r in range(5):
                touched = rng.choice(n, n // 100, replace=False)
                when = np.full(len(touched), t0 + 24 * 3600_000 + r * 1000, np.int64)
                view.apply(
                    view.entity_rows([ids[w] for w in touched]), when, rng.lognormal(3, 1, (len(touched), 1)),
                    view.value_ids([f"m{w % 5000}" for w in touched]),
                    np.full(len(touched), total + r, np.int64),
                )  # fmt: skip
                started = time.perf_counter()
                _, size = log.write(0, state, topic_id="bench", fingerprint="bench", tombstones={})
                producer.flush()
                spent.append(time.perf_counter() - started)
                sent.append(size)
            say(f"state: restoring {n:,} entities from Kafka")
            started = time.perf_counter()
            restored = log.read(0, [plan])
            took = time.perf_counter() - started
            assert restored.views is not None
            assert len(restored.views[plan.name]) == n
            rows.append(
                f"| {n:,} | {full:,.1f} s | {np.median(spent) * 1000:,.0f} | {np.median(sent) / 1e6:,.2f} MB | "
                f"{took:,.1f} s | {n / took:,.0f} |"
            )
    return "\n".join(rows) + "\n"


def run(parts: list[str] | None = None) -> str:
    out = ["### Window state at scale (`python -m tests.benchmarks state`)\n"]
    if parts is None or "memory" in parts:
        text, _ = _memory()
        out += [
            f"Ingest stage (user view: count/sum/mean/max over 5m/1h/24h, distinct merchants 1h, seconds since "
            f"previous; event-id dedup), {PER_USER} events per user over one day, fed through "
            "`IngestStage.process` in batches of 20k; RSS growth of a fresh process after warm-up, divided by "
            f"users. Baseline: the dense layout at commit {BASELINE}, same script, same run.\n",
            text,
        ]
    if parts is None or "checkpoint" in parts:
        out += [
            "Checkpoints to a compacted topic on the local broker (one partition), `StateLog.write` + flush; "
            "restore = `StateLog.read` of the partition into a fresh state.\n",
            _checkpoints(),
        ]
    return "\n".join(out)
