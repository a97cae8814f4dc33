"""The central test: the same generated events through the stream processor on the real broker and through the
backfill; every feature of every entity read back with Feast's ``get_online_features`` equals the backfill's
value at the same instant, and both equal the pandas recomputation in ``reference.py`` over the events an
independent implementation of the acceptance rules keeps. Run once straight through and once with the
processor killed -9 mid-stream and restarted."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import KafkaException

from streamscore.features import backfill, load_plans, rules_for
from streamscore.features.plan import ViewPlan
from streamscore.generator import ARROW_SCHEMA, GeneratorConfig, generate_frame, start_ending_by
from streamscore.kafka import Producer, ensure_topics, read_dead_letter
from streamscore.serde import Serde
from streamscore.settings import Settings
from streamscore.store import apply_definitions, feature_store, quiet_feast
from tests.conftest import free_port
from tests.features.harness import ProcessorProcess, isolated_run, lag, wait_caught_up
from tests.features.reference import reference_at
from tests.kafka.helpers import drain

pytestmark = pytest.mark.integration

N_EVENTS = 12_000
LATENESS_S = 30.0


def _arrival_stream(seed: int) -> tuple[pd.DataFrame, list[tuple[str, bytes]]]:
    """Generated events plus the bad input a real topic sees, in one arrival order.

    Returns the Parquet-able frame (arrival order, invalid rows and duplicates included) and the extra raw
    messages that are not even Avro."""
    config = GeneratorConfig(
        events=N_EVENTS, users=150, merchants=40, rate=N_EVENTS / (4 * 3600), seed=seed,
        out_of_order_rate=0.03, late_rate=0.01,
    )  # fmt: skip
    config = replace(config, start=start_ending_by(config, datetime.now(tz=UTC)))  # all past, at any hour
    frame = generate_frame(config)
    rng = np.random.default_rng(seed)
    frame["_pos"] = np.arange(len(frame), dtype=float)
    dupes = frame.iloc[rng.choice(len(frame) - 200, 40, replace=False)].copy()
    dupes["_pos"] += 150.5  # the same event sent again a little later
    bad = frame.iloc[rng.choice(len(frame), 6, replace=False)].copy()
    bad["event_id"] = [f"bad-{i}" for i in range(len(bad))]
    bad["amount"] = [-5.0, -0.01, -1e9, np.nan, np.inf, -np.inf]
    bad["_pos"] += 0.5
    future = frame.iloc[100:102].copy()
    future["event_id"] = ["future-0", "future-1"]
    future["event_time"] = pd.Timestamp(datetime.now(tz=UTC) + timedelta(days=2)).floor("ms")
    future["_pos"] += 0.5
    merged = pd.concat([frame, dupes, bad, future]).sort_values("_pos", kind="stable").drop(columns="_pos")
    raw = [("garbage", b"\x01\x02\x03"), ("truncated", b"\xc3\x01\x00")]
    return merged.reset_index(drop=True), raw


def _accepted(frame: pd.DataFrame, rules_lag_ms: int) -> pd.DataFrame:
    """The acceptance rules, written again independently: valid, first copy of an id, and not late against
    the user's newest earlier event (arrival order)."""
    now_ms = time.time() * 1000
    f = frame.copy()
    f["time_ms"] = (pd.to_datetime(f["event_time"], utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(
        milliseconds=1
    )
    valid = f["amount"].notna() & np.isfinite(f["amount"]) & (f["amount"] >= 0) & (f["time_ms"] < now_ms + 300_000)
    f = f[valid]
    f = f[~f.duplicated("event_id", keep="first")]
    previous_max = f.groupby("user_id")["time_ms"].transform(lambda s: s.cummax().shift(1))
    late = previous_max.notna() & (f["time_ms"] < previous_max - rules_lag_ms)
    return f[~late]


def _produce(settings: Settings, frame: pd.DataFrame, raw: list[tuple[str, bytes]]) -> None:
    serde = Serde("transaction")
    producer = Producer(settings.kafka)
    for record in frame.to_dict("records"):
        record["event_time"] = record["event_time"].to_pydatetime()
        record["is_fraud"] = bool(record["is_fraud"])
        producer.send(settings.topics.transactions, serde.encode(record), key=record["user_id"])
    for key, value in raw:
        producer.send(settings.topics.transactions, value, key=f"u-raw-{key}")
    producer.flush()


def _online(settings: Settings, plans: list[ViewPlan], users: list[str], merchants: list[str]) -> dict[str, dict]:
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


def _lag(settings: Settings, topics: list[str]) -> int:
    try:
        return lag(settings, topics)
    except KafkaException:
        return 1 << 62  # coordinator not ready yet: nothing committed as far as we know


def _same(a: object, b: float) -> bool:
    if a is None:
        return bool(np.isnan(b))
    return bool(np.isclose(float(a), b, rtol=1e-9, atol=1e-9))  # type: ignore[arg-type]


@pytest.fixture(params=["straight", "kill-9"])
def run(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> tuple[str, Settings, Path]:
    name = f"{request.param}-{tmp_path.name[-12:]}".replace("_", "-")
    # Small batches in the kill run: slow enough to be killed mid-stream on a fast machine.
    straight = request.param == "straight"
    s = isolated_run(
        settings, tmp_path, name, redis_db=1 if straight else 2,
        snapshot_interval_s=0.5, allowed_lateness_s=LATENESS_S, batch_size=500 if straight else 40,
    )  # fmt: skip
    ensure_topics(s)
    apply_definitions(s)
    return request.param, s, tmp_path


def test_stream_and_backfill_agree_with_pandas(run: tuple[str, Settings, Path]) -> None:
    mode, settings, tmp = run
    plans = load_plans(settings)
    rules = rules_for(settings, plans)
    frame, raw = _arrival_stream(seed=11)
    # The kill run sends the last third only once the processor is frozen mid-stream: then the kill always
    # lands with events applied after the last snapshot and more still to come, however fast this machine is.
    held_back = len(frame) // 3 if mode == "kill-9" else 0
    _produce(settings, frame.iloc[: len(frame) - held_back], raw)

    log = tmp / "processor.log"
    if mode == "kill-9":
        first = ProcessorProcess(settings, log).start()
        topics = [settings.topics.transactions]
        deadline = time.monotonic() + 120
        while _lag(settings, topics) > len(frame) // 3 and time.monotonic() < deadline:
            assert first.alive(), first.tail()
            time.sleep(0.05)
        first.freeze()
        _produce(settings, frame.iloc[len(frame) - held_back :], [])
        assert _lag(settings, topics) >= held_back, "frozen processor moved on"
        first.kill()
    if mode == "straight":
        # Scale-out: two processes split the partitions; merchants still come out right via the re-keyed topic.
        ports = free_port(), free_port()
        one_settings, two_settings = (settings.model_copy(update={"metrics_port": p}) for p in ports)
        with ProcessorProcess(one_settings, log) as one, ProcessorProcess(two_settings, tmp / "second.log") as two:
            wait_caught_up(settings, one)
            assert two.alive(), two.tail()
            metrics = "".join(
                urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=10).read().decode() for p in ports
            )
        assert "Traceback" not in two.log.read_text(), two.tail()
    else:
        with ProcessorProcess(settings, log) as proc:
            wait_caught_up(settings, proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    if mode == "straight":
        for name in (
            "streamscore_features_events_in_total", "streamscore_features_batches_total",
            "streamscore_features_batch_size_bucket", "streamscore_features_late_events_total",
            "streamscore_dead_letters_total", "streamscore_online_write_seconds_bucket",
            "streamscore_features_freshness_seconds_bucket", "streamscore_features_consumer_lag",
        ):  # fmt: skip
            assert name in metrics, name

    # Backfill the same history (arrival order, with its duplicates and invalid rows).
    history = tmp / "history.parquet"
    nullable = pa.schema([f.with_nullable(True) for f in ARROW_SCHEMA])  # the NaN amounts become nulls
    pq.write_table(pa.Table.from_pandas(frame, schema=nullable, preserve_index=False), history)
    t0 = frame["event_time"].min().to_pydatetime() - timedelta(minutes=1)
    t1 = datetime.now(tz=UTC) + timedelta(minutes=1)
    report = backfill(history, plans, tmp / "offline", start=t0, end=t1, rules=rules)

    accepted = _accepted(frame, rules.allowed_lag_ms)
    assert report.accepted == len(accepted)
    users, merchants = sorted(accepted["user_id"].unique()), sorted(accepted["merchant_id"].unique())
    online = _online(settings, plans, users, merchants)
    checked = 0
    for plan in plans:
        offline = pq.read_table(tmp / "offline" / f"{plan.name}.parquet").to_pandas()
        offline["time_ms"] = (offline["event_timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
        last = offline.sort_values("time_ms", kind="stable").groupby(plan.entity_key).tail(1).set_index(plan.entity_key)
        for entity in users if plan.entity_key == "user_id" else merchants:
            row = last.loc[entity]
            want = reference_at(plan, accepted, entity, int(row["time_ms"]))
            for name in plan.feature_names:
                assert _same(row[name], want[name]), (mode, plan.name, entity, name, row[name], want[name])
                got = online[f"{plan.name}/{entity}"][name]
                assert _same(got, want[name]), (mode, plan.name, entity, name, got, want[name])
                checked += 1
    assert checked > 150 * 14

    # Bad input went to the dead-letter topic with its reason; nothing else did.
    letters = drain(settings, settings.topics.dead_letters, group=f"dlq-{mode}-{tmp.name}")
    reasons = Counter(read_dead_letter(m).reason for m in letters)
    assert reasons["amount-negative"] >= 3
    assert reasons["amount-not-finite"] >= 3
    assert reasons["event-time-in-future"] >= 2
    assert reasons["undecodable-bad-magic"] >= 1
    assert reasons["undecodable-truncated"] + reasons["undecodable-corrupt"] >= 1
    # A repeat is "duplicate" while its first copy is remembered and "late" once the user's watermark left
    # it behind (which one depends on batch boundaries); dropped either way, and never applied.
    late = len(frame) - len(accepted) - 40 - 6 - 2  # all rows, minus accepted, repeats, invalid, future
    assert late >= 1
    assert reasons["duplicate"] + reasons["late"] >= 40 + late
    assert reasons["duplicate"] >= 1
    if mode == "straight":
        expected_dead = len(frame) + len(raw) - len(accepted)
        assert sum(reasons.values()) == expected_dead, reasons
