"""ViewState beyond the window contract: packed rows, dirty tracking, event-id dedup, eviction, the backfill's
row carry-over and memory per entity."""

from __future__ import annotations

import importlib
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from streamscore.features import kernels
from streamscore.features.plan import ViewPlan, compile_view
from streamscore.features.state import ViewState
from tests.features.reference import ReferenceDeduplicator
from tests.features.test_contract import _events, _inputs

LAG = 60_000
SINCE = [("since", {"streamscore.aggregate": "seconds_since_previous"})]


def _agg(column: str, function: str, window: timedelta, name: str) -> SimpleNamespace:
    return SimpleNamespace(
        column=column, function=function, time_window=window, slide_interval=timedelta(minutes=1), name=name
    )


def _rich_plan() -> ViewPlan:
    """Every function, two numeric columns, two distinct windows, a 1 h ring over ~6 h of events."""
    windows = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1)}
    aggs = [
        _agg(column, fn, w, f"{column}_{fn}_{label}")
        for label, w in windows.items()
        for fn in ("count", "sum", "mean", "min", "max")
        for column in ("amount", "fee")
    ]
    aggs += [_agg("merchant", "count_distinct", w, f"merchants_{label}") for label, w in windows.items()]
    return compile_view("v", "entity", aggs, SINCE)


def _production_plan() -> ViewPlan:
    """The user view of feature_repo/definitions.py."""
    windows = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1), "24h": timedelta(hours=24)}
    aggs = [
        _agg("amount", fn, w, f"amount_{fn}_{label}")
        for label, w in windows.items()
        for fn in ("count", "sum", "mean", "max")
    ]
    aggs.append(_agg("merchant", "count_distinct", timedelta(hours=1), "merchants_1h"))
    return compile_view("user", "entity", aggs, SINCE)


def _stream(seed: int, n: int = 3000) -> pd.DataFrame:
    """``_events`` in arrival order with event ids, an offset per message, and re-deliveries: copies of
    earlier messages arriving a little (inside the lag) or much later, some with another time."""
    rng = np.random.default_rng(seed)
    events = _events(seed, n)
    events["fee"] = np.round(rng.random(n) * 3, 2)
    events["event_id"] = [f"e{i}" for i in range(n)]
    copies = events.iloc[rng.choice(n, n // 8, replace=False)].copy()
    moved = rng.random(len(copies)) < 0.2
    copies.loc[moved, "time_ms"] += rng.integers(-30_000, 30_000, int(moved.sum()))
    position = np.concatenate([np.arange(n), copies.index.to_numpy() + rng.choice([3, 40, 400], len(copies)) + 0.5])
    stream = pd.concat([events, copies]).iloc[np.argsort(position, kind="stable")].reset_index(drop=True)
    stream["offset"] = np.arange(len(stream), dtype=np.int64)
    return stream


def _process(state: ViewState, batch: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """What the ingest stage does with a batch: dedup, then the lateness gate, then apply."""
    rows, times, values, distinct = _inputs(state, batch)
    repeat = state.dedup(rows, ViewState.value_ids(batch["event_id"].tolist()), times, LAG)
    fresh = np.nonzero(~repeat)[0]
    late = state.gate(rows[fresh], times[fresh], LAG)
    ok = fresh[~late]
    status = state.apply(
        rows[ok], times[ok], values[ok], None if distinct is None else distinct[ok], batch["offset"].to_numpy()[ok]
    )
    return repeat, late, status


def _read(state: ViewState, ids: list[str]) -> np.ndarray:
    return state.read(np.array([state.rows[k] for k in ids], np.int64))


def _batches(frame: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    return [frame.iloc[part] for part in np.array_split(np.arange(len(frame)), n)]


def test_restored_state_continues_exactly_like_the_original() -> None:
    plan = _rich_plan()
    stream = _stream(seed=11)
    batches = _batches(stream, 30)
    batches[15] = pd.concat([batches[14].tail(3), batches[15]])  # re-deliveries across the restore
    original = ViewState(plan, capacity=2, distinct_capacity=2)
    for batch in batches[:15]:
        _process(original, batch)
    ids = sorted(original.rows)
    restored = ViewState(plan, capacity=2, distinct_capacity=2)
    restored.restore(ids, original.pack(ids))
    assert restored.take_dirty() == ([], [])  # restored rows are not changes
    for name in ("max_t", "prev_t", "seen_max", "applied", "cur_k"):
        got = getattr(restored, name)[[restored.rows[k] for k in ids]]
        np.testing.assert_array_equal(got, getattr(original, name)[[original.rows[k] for k in ids]], err_msg=name)
    assert (original.applied[[original.rows[k] for k in ids]] >= 0).all()
    np.testing.assert_array_equal(_read(restored, ids), _read(original, ids))
    before = set(pd.concat(batches[:15])["event_id"])
    carried = 0  # repeats of messages first seen before the restore: the dedup tables were carried over
    for batch in batches[15:]:
        got, want = _process(restored, batch), _process(original, batch)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
        carried += int(np.isin(batch["event_id"].to_numpy()[got[0]], list(before)).sum())
        # Bit for bit, NaN where NaN: the same windows, distinct sets and dedup tables.
        np.testing.assert_array_equal(_read(restored, ids), _read(original, ids))
        assert restored.pack(ids) == original.pack(ids)
    assert carried > 0


def test_restore_overwrites_an_entity_and_rejects_other_layouts() -> None:
    plan = _rich_plan()
    state = ViewState(plan)
    _process(state, _stream(seed=5, n=600))
    blobs = dict(zip(["a", "b"], state.pack(["a", "b"]), strict=True))
    state.restore(["a"], [blobs["b"]])  # "a" becomes a copy of "b"
    np.testing.assert_array_equal(_read(state, ["a"]), _read(state, ["b"]))
    assert state.pack(["a"]) == [blobs["b"]]

    other = compile_view("v", "entity", [_agg("amount", "sum", timedelta(minutes=5), "s")])
    small = ViewState(other)
    small.entity_rows(["a"])
    wrong_version = bytearray(blobs["a"])
    wrong_version[5] ^= 0xFF  # the version byte of the first word (little-endian)
    for blob, message in [
        (b"", "truncated"),
        (blobs["a"][:-4], "truncated"),
        (blobs["a"][:-8], "corrupt"),
        (bytes(wrong_version), "another layout"),
        (small.pack(["a"])[0], "another layout"),
    ]:
        with pytest.raises(ValueError, match=message):
            state.restore(["z", "a"], [blobs["a"], blob])
    with pytest.raises(ValueError, match="another layout"):
        small.restore(["z"], [blobs["a"]])
    assert "z" not in state.rows  # nothing changed
    assert "z" not in small.rows
    np.testing.assert_array_equal(_read(state, ["a"]), _read(state, ["b"]))


def test_take_dirty_returns_exactly_the_changed_entities() -> None:
    plan = _rich_plan()
    state = ViewState(plan)
    t0 = 1_700_000_000_000

    def frame(entity: str, t: int, event_id: str) -> pd.DataFrame:
        return pd.DataFrame(
            {"entity": [entity], "time_ms": [t], "amount": [1.0], "fee": [0.5], "merchant": ["m"],
             "event_id": [event_id], "offset": [0]}
        )  # fmt: skip

    _process(state, pd.concat([frame("a", t0, "1"), frame("b", t0, "2")]))
    ids, blobs = state.take_dirty()
    assert sorted(ids) == ["a", "b"]
    assert state.take_dirty() == ([], [])
    copy = ViewState(plan)
    copy.restore(ids, blobs)
    np.testing.assert_array_equal(_read(copy, ["a", "b"]), _read(state, ["a", "b"]))

    _process(state, frame("c", t0, "3"))
    assert state.take_dirty()[0] == ["c"]
    rows = state.entity_rows(["d", "a"])
    state.gate(rows[:1], np.array([t0]), LAG)  # a new watermark: a change
    assert state.take_dirty()[0] == ["d"]
    state.gate(rows[1:], np.array([t0 - 10 * LAG]), LAG)  # late: nothing changes
    assert state.gate(rows[1:], np.array([t0]), LAG).tolist() == [False]  # not newer: nothing changes either
    assert state.take_dirty() == ([], [])
    assert state.dedup(rows[1:], ViewState.value_ids(["1"]), np.array([t0]), LAG).tolist() == [True]
    assert state.take_dirty() == ([], [])  # a repeat changes nothing
    assert state.dedup(rows[1:], ViewState.value_ids(["4"]), np.array([t0]), LAG).tolist() == [False]
    assert state.take_dirty()[0] == ["a"]
    status = state.apply(rows[1:], np.array([t0 - 5 * 3600_000]), np.array([[1.0, 1.0]]), np.array([7]))
    assert status.tolist() == [kernels.DROPPED_OLD]
    assert state.take_dirty() == ([], [])  # older than the ring: applied nowhere


def test_dedup_matches_the_reference_deduplicator() -> None:
    """The same repeats as the per-user deque of ids the ingest stage used to keep (``rules.Deduplicator``,
    copied in reference.py), with the watermark of each batch's start, and the same late events after it."""
    rng = np.random.default_rng(3)
    n = 6000
    users = rng.choice([f"u{i}" for i in range(25)], n)
    times = 1_700_000_000_000 + np.sort(rng.integers(0, 4 * 3600_000, n)) + rng.integers(-2 * LAG, LAG, n)
    ids = [f"e{i}" for i in range(n)]
    # Re-deliveries: the same message again, soon or long after; a few with another time.
    for i in rng.integers(0, n - 1, n // 5).tolist():
        j = min(n - 1, i + int(rng.choice([1, 5, 50, 500])))
        users[j], ids[j] = users[i], ids[i]
        times[j] = times[i] if rng.random() < 0.8 else times[i] + int(rng.integers(-LAG, LAG))
    plan = _rich_plan()
    state = ViewState(plan, capacity=2, distinct_capacity=2)
    references = [ReferenceDeduplicator(LAG)]
    former = getattr(importlib.import_module("streamscore.features.rules"), "Deduplicator", None)
    if former is not None:  # the stage's former implementation, while it exists
        references.append(former(LAG))
    watermark: dict[str, int] = {}
    got: list[bool] = []
    want: list[list[bool]] = [[] for _ in references]
    for part in np.array_split(np.arange(n), 60):
        rows = state.entity_rows(users[part].tolist())
        repeat = state.dedup(rows, ViewState.value_ids([ids[i] for i in part]), times[part], LAG)
        fresh = np.nonzero(~repeat)[0]
        state.gate(rows[fresh], times[part][fresh], LAG)
        got += repeat.tolist()
        start = dict(watermark)  # dedup runs before the gate: the watermark of the batch's start
        for i in part.tolist():
            u, t = str(users[i]), int(times[i])
            seen = [ref.seen(u, ids[i], t, start.get(u, int(kernels.NO_TIME))) for ref in references]
            for w, s in zip(want, seen, strict=True):
                w.append(s)
            if not seen[0] and (u not in watermark or t >= watermark[u] - LAG):
                watermark[u] = max(watermark.get(u, t), t)
        keys = sorted(watermark)
        np.testing.assert_array_equal(state.seen_max[state.entity_rows(keys)], [watermark[k] for k in keys])
    for w in want:
        assert got == w
    assert 0 < sum(got) < n // 5  # repeats found, and old ones forgotten


def test_dedup_remembers_an_id_exactly_as_long_as_its_event_could_pass_the_gate() -> None:
    state = ViewState(_rich_plan())
    t = 1_700_000_000_000
    row = state.entity_rows(["u"])

    def batch(ids: list[str], times: list[int]) -> list[bool]:
        rows = np.repeat(row, len(ids))
        repeat = state.dedup(rows, ViewState.value_ids(ids), np.array(times), LAG)
        state.gate(rows[~repeat], np.array(times)[~repeat], LAG)
        return repeat.tolist()

    assert batch(["a", "b", "a"], [t, t + 1, t]) == [False, False, True]
    assert batch(["c"], [t + LAG]) == [False]  # the watermark moves to t + LAG after this batch
    assert batch(["a", "b"], [t, t + 1]) == [True, True]  # t is exactly the lag behind: still remembered
    assert batch(["d"], [t + LAG + 1]) == [False]
    assert batch(["a", "b"], [t, t + 1]) == [False, True]  # now a is forgotten (and late), b is not yet


def test_evict_removes_idle_clean_entities_and_returns_memory() -> None:
    plan = _rich_plan()  # ring: 1 h
    state = ViewState(plan, capacity=16)
    t0 = 1_700_000_000_000
    keys = [f"u{i}" for i in range(4000)]
    rows = state.entity_rows(keys)
    times = t0 + np.arange(len(keys), dtype=np.int64)
    values = np.ones((len(keys), 2))
    state.apply(rows, times, values, np.arange(len(keys), dtype=np.int64))
    state.take_dirty()
    busy = state.entity_rows(["busy", "unsaved"])
    state.apply(busy, np.array([t0 + 3 * 3600_000, t0]), np.ones((2, 2)))
    state.take_dirty()
    state.apply(busy[1:], np.array([t0 + 1]), np.ones((1, 2)))  # "unsaved" is dirty
    keep = keys[-10:]
    before_values = _read(state, keep)
    before = state.nbytes
    evicted = state.evict(cutoff_ms=int(times[-10]))
    assert sorted(evicted) == sorted(keys[:-10])
    assert set(state.rows) == {*keep, "busy", "unsaved"}
    assert len(state) == 12
    assert state.nbytes < before / 10  # arrays and pools rebuilt smaller
    np.testing.assert_array_equal(_read(state, keep), before_values)  # survivors unchanged by compaction
    assert state.take_dirty()[0] == ["unsaved"]  # dirty flags survive compaction too
    assert state.evict(cutoff_ms=t0 + 2) == ["unsaved"]  # saved now: evictable

    back = state.entity_rows([keys[0]])  # an evicted entity starts empty
    state.apply(back, np.array([t0 + 10]), np.array([[2.0, 0.0]]))
    count = state.plan.feature_names.index("amount_count_1h")
    since = state.plan.feature_names.index("since")
    assert state.read(back)[0, count] == 1
    assert np.isnan(state.read(back)[0, since])


def test_an_entity_evicted_past_the_ring_comes_back_like_one_never_evicted() -> None:
    plan = _rich_plan()
    events = _stream(seed=8, n=800)
    kept, evicted = ViewState(plan), ViewState(plan)
    for state in (kept, evicted):
        _process(state, events)
        state.take_dirty()
    last = int(events["time_ms"].max())
    assert evicted.evict(cutoff_ms=last + 1) != []
    assert len(evicted) == 0
    later = events.copy()
    later["time_ms"] += last - int(events["time_ms"].min()) + plan.horizon_ms + 1  # every event past the ring
    later["event_id"] += "-later"
    for batch in _batches(later, 5):
        for a, b in zip(_process(kept, batch), _process(evicted, batch), strict=True):
            np.testing.assert_array_equal(a, b)
        ids = sorted(evicted.rows)
        np.testing.assert_array_equal(_read(evicted, ids), _read(kept, ids))


def test_remove_forgets_entities_and_ignores_unknown_ids() -> None:
    plan = _rich_plan()
    state = ViewState(plan)
    _process(state, _stream(seed=4, n=400))
    assert set(state.rows) == set("abcde")
    state.remove(["a", "nobody", "c"])
    assert set(state.rows) == {"b", "d", "e"}
    assert state.ids.count(None) == 2  # free rows, reused next
    rows = state.entity_rows(["a"])
    assert state.read(rows)[0, plan.feature_names.index("amount_count_1h")] == 0


def test_backfill_carry_over_matches_one_pass() -> None:
    """``move_row`` as ``backfill._run_view`` drives it: chunks of entity-sorted events, the last entity of a
    chunk continuing in row 0 of the next, equal to one pass over everything."""
    plan = _rich_plan()
    events = _stream(seed=9, n=2000).sort_values(["entity", "time_ms"], kind="stable").reset_index(drop=True)
    whole = ViewState(plan)
    want, _ = whole.apply_and_read(*_inputs(whole, events))
    state = ViewState(plan, capacity=2, distinct_capacity=2)
    entity = events["entity"].to_numpy()
    got = []
    carry = None
    for chunk in np.array_split(np.arange(len(events)), 7):
        same = np.zeros(len(chunk), np.bool_)
        same[1:] = entity[chunk[1:]] == entity[chunk[:-1]]
        same[0] = entity[chunk[0]] == carry
        rows = np.cumsum(~same).astype(np.int64)
        state.ensure_rows(int(rows[-1]) + 1)
        _, times, values, distinct = _inputs(whole, events.iloc[chunk])
        out, _ = state.apply_and_read(rows, times, values, distinct)
        got.append(out)
        carry = entity[chunk[-1]]
        state.move_row(int(rows[-1]), 0)
    np.testing.assert_array_equal(np.concatenate(got), want)


def test_memory_per_user_follows_events_not_window_length() -> None:
    """20,000 users with ~10 events each over a day on the production user view (24 h of one-minute tiles)."""
    plan = _production_plan()
    rng = np.random.default_rng(1)
    users = 20_000
    per_user = rng.poisson(10, users) + 1
    n = int(per_user.sum())
    entity = np.repeat(np.arange(users), per_user)
    times = 1_700_000_000_000 + rng.integers(0, 24 * 3600_000, n)
    order = np.argsort(times, kind="stable")
    events = pd.DataFrame(
        {
            "entity": np.array([f"user-{i:06d}" for i in range(users)], dtype=object)[entity[order]],
            "time_ms": times[order],
            "amount": np.round(rng.lognormal(3, 1.2, n), 2),
            "merchant": np.array([f"m{i}" for i in range(3000)], dtype=object)[rng.integers(0, 3000, n)],
            "event_id": [f"e{i}" for i in range(n)],
            "offset": np.arange(n, dtype=np.int64),
        }
    )
    state = ViewState(plan)
    for batch in _batches(events, 100):
        _process(state, batch)
    assert len(state) == users
    dense = plan.n_tiles * (2 + 3 * len(plan.numeric_columns)) * 8
    bytes_per_user = state.nbytes / users
    print(f"\n{bytes_per_user:.0f} bytes per user (dense ring: {dense:,})")
    assert bytes_per_user < 1000
    assert bytes_per_user < dense / 50


def test_value_ids_are_the_hashes_checkpoints_were_written_with() -> None:
    """Event-id and distinct-value hashes live in checkpoints: a restore on another host, or after an upgrade,
    must hash the same strings to the same ids. They were written with pandas' default (factorizing) hash."""
    import pandas as pd

    values = ["u-1", "u-1", "", "émoji-🙂", "x" * 300, "u-2", "u-1"]
    expected = (pd.util.hash_array(np.asarray(values, dtype=object)) >> np.uint64(1)).astype(np.int64)
    assert ViewState.value_ids(values).tolist() == expected.tolist()
    assert len(set(ViewState.value_ids(values).tolist())) == 5
