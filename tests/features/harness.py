"""Run the real feature processor (`python -m streamscore features run`) against the test stack, and check
what it wrote to the online store against the backfill and the pandas reference."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import redis
from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from streamscore.features import backfill
from streamscore.features.plan import ViewPlan
from streamscore.features.rules import EventRules
from streamscore.generator import ARROW_SCHEMA
from streamscore.kafka import Producer, admin_config, group_lag
from streamscore.serde import Serde
from streamscore.settings import Settings, child_env
from streamscore.store import feature_store, quiet_feast
from tests.features.reference import reference_at

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
    so runs sharing a stack never see each other's messages, offsets or online rows. The database is
    emptied first: a run of the same test on the other engine must not find the last run's rows there."""
    topics = base.topics.model_copy(
        update={
            "transactions": f"tx-{name}",
            "transactions_by_merchant": f"tx-by-merchant-{name}",
            "dead_letters": f"dlq-{name}",
            "features_state": f"state-{name}",
        }
    )
    redis_url = base.redis.url.rsplit("/", 1)[0] + f"/{redis_db}"
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    return base.model_copy(
        update={
            "topics": topics,
            "data_dir": data_dir,
            "redis": base.redis.model_copy(update={"url": redis_url}),
            "features": base.features.model_copy(update={"group_id": f"features-{name}", **features}),
        }
    )


def lag(settings: Settings, topics: list[str]) -> int:
    """Messages not yet committed by the processor's group (committed = covered by a checkpoint, so zero lag
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


def wait_split(settings: Settings, processes: int, timeout_s: float = 120.0) -> None:
    """Wait until the group is stable and each input topic's partitions are held by ``processes`` members:
    the processes share each topic, rather than one taking every partition of a topic."""
    group = settings.features.group_id
    topics = [settings.topics.transactions, settings.topics.transactions_by_merchant]
    admin = AdminClient(admin_config(settings.kafka))
    holders: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            group_info = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
        except KafkaException:
            group_info = None  # the coordinator is still loading: ask again
        if group_info is not None and group_info.state == ConsumerGroupState.STABLE:
            holders = {
                t: sum(any(tp.topic == t for tp in m.assignment.topic_partitions) for m in group_info.members)
                for t in topics
            }
            if all(n == processes for n in holders.values()):
                return
        time.sleep(0.25)
    raise AssertionError(f"group {group} not split over {processes} processes after {timeout_s}s: {holders}")


def accepted_events(frame: pd.DataFrame, rules_lag_ms: int) -> pd.DataFrame:
    """The acceptance rules, written again independently: valid, first copy of an id, and not late against
    the user's newest earlier event (arrival order)."""
    now_ms = time.time() * 1000
    f = frame.copy()
    f["time_ms"] = (pd.to_datetime(f["event_time"], utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(
        milliseconds=1
    )
    valid = f["amount"].notna() & np.isfinite(f["amount"]) & (f["amount"] >= 0) & (f["amount"] <= 10_000_000)
    valid &= f["time_ms"] < now_ms + 300_000
    for key in ("event_id", "user_id", "merchant_id"):
        ids = f[key].astype(str)
        valid &= f[key].notna() & (ids.str.len().between(1, 128)) & ~ids.str.contains(r"[\x00-\x1f\x7f-\x9f]")
    f = f[valid]
    f = f[~f.duplicated("event_id", keep="first")]
    previous_max = f.groupby("user_id")["time_ms"].transform(lambda s: s.cummax().shift(1))
    late = previous_max.notna() & (f["time_ms"] < previous_max - rules_lag_ms)
    return f[~late]


def produce(settings: Settings, frame: pd.DataFrame, raw: list[tuple[str, bytes]]) -> None:
    serde = Serde("transaction")
    producer = Producer(settings.kafka)
    for record in frame.to_dict("records"):
        record["event_time"] = record["event_time"].to_pydatetime()
        record["is_fraud"] = bool(record["is_fraud"])
        producer.send(settings.topics.transactions, serde.encode(record), key=record["user_id"])
    for key, value in raw:
        producer.send(settings.topics.transactions, value, key=f"u-raw-{key}")
    producer.flush()


def online_values(settings: Settings, plans: list[ViewPlan], users: list[str], merchants: list[str]) -> dict[str, dict]:
    store = feature_store(settings)
    out: dict[str, dict] = {}
    with quiet_feast():
        for plan, ids in ((p, users if p.entity_key == "user_id" else merchants) for p in plans):
            refs = [f"{plan.name}:{name}" for name in plan.feature_names]
            rows = store.get_online_features(
                features=refs, entity_rows=[{plan.entity_key: i} for i in ids], full_feature_names=True
            ).to_dict()
            for n, entity in enumerate(ids):
                out[f"{plan.name}/{entity}"] = {name: rows[f"{plan.name}__{name}"][n] for name in plan.feature_names}
    return out


def wait_lag(settings: Settings, topics: list[str]) -> int:
    try:
        return lag(settings, topics)
    except KafkaException:
        return 1 << 62  # coordinator not ready yet: nothing committed as far as we know


def same(a: object, b: float) -> bool:
    """Equal values, or both null (None online, NaN offline and in the reference)."""
    if a is None or (isinstance(a, float) and np.isnan(a)):
        return bool(np.isnan(b))
    return bool(np.isclose(float(a), b, rtol=1e-9, atol=1e-9))  # type: ignore[arg-type]


def check_against_backfill(
    settings: Settings, plans: list[ViewPlan], rules: EventRules, frame: pd.DataFrame, tmp: Path, label: str = ""
) -> int:
    """Every feature of every entity in the online store (read with Feast) equals the backfill of ``frame``
    (all events, in arrival order) at the entity's newest event, and both equal the pandas reference over
    the accepted events. Returns the number of values checked."""
    history = tmp / f"history{label}.parquet"
    nullable = pa.schema([f.with_nullable(True) for f in ARROW_SCHEMA])  # NaN amounts become nulls
    pq.write_table(pa.Table.from_pandas(frame, schema=nullable, preserve_index=False), history)
    t0 = frame["event_time"].min().to_pydatetime() - timedelta(minutes=1)
    t1 = datetime.now(tz=UTC) + timedelta(minutes=1)
    out_dir = tmp / f"offline{label}"
    report = backfill(history, plans, out_dir, start=t0, end=t1, rules=rules)
    accepted = accepted_events(frame, rules.allowed_lag_ms)
    assert report.accepted == len(accepted)
    users, merchants = sorted(accepted["user_id"].unique()), sorted(accepted["merchant_id"].unique())
    online = online_values(settings, plans, users, merchants)
    checked = 0
    for plan in plans:
        offline = pq.read_table(out_dir / f"{plan.name}.parquet").to_pandas()
        offline["time_ms"] = (offline["event_timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
        last = offline.sort_values("time_ms", kind="stable").groupby(plan.entity_key).tail(1).set_index(plan.entity_key)
        for entity in users if plan.entity_key == "user_id" else merchants:
            row = last.loc[entity]
            want = reference_at(plan, accepted, entity, int(row["time_ms"]))
            for name in plan.feature_names:
                assert same(row[name], want[name]), (label, plan.name, entity, name, row[name], want[name])
                got = online[f"{plan.name}/{entity}"][name]
                assert same(got, want[name]), (label, plan.name, entity, name, got, want[name])
                checked += 1
    return checked
