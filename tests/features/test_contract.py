"""One contract, every aggregate: each function and window through the stream path (batches in arrival
order, read as of each entity's newest event) and the batch path (event-time order, a row per event), both
equal to the independent pandas recomputation in ``reference.py``."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from streamscore.features.plan import FUNCTIONS, ViewPlan, compile_view
from streamscore.features.state import ViewState
from tests.features.reference import reference_at

WINDOWS = {"1m": timedelta(minutes=1), "5m": timedelta(minutes=5), "1h": timedelta(hours=1)}
SLIDES = {"10s": timedelta(seconds=10), "1m": timedelta(minutes=1)}


def _plan(function: str, window: timedelta, slide: timedelta) -> ViewPlan:
    """The feature under test is named ``f``. A 2 h companion window makes the tile ring longer than the
    tested window, as in production (1 h and 5 min windows share a 24 h ring), so events a few tiles behind
    fall inside the ring but outside the window: the case a window boundary bug gets wrong."""
    ring = SimpleNamespace(column="amount", function="count", time_window=timedelta(hours=2), slide_interval=slide)
    ring.name = "ring"
    if function == "seconds_since_previous":
        return compile_view("v", "entity", [ring], [("f", {"streamscore.aggregate": "seconds_since_previous"})])
    column = "merchant" if function == "count_distinct" else "amount"
    agg = SimpleNamespace(column=column, function=function, time_window=window, slide_interval=slide, name="f")
    return compile_view("v", "entity", [agg, ring])


def _events(seed: int, n: int = 3000) -> pd.DataFrame:
    """Bursty, out-of-order events for a few entities over ~6 hours, with repeated timestamps."""
    rng = np.random.default_rng(seed)
    base = np.sort(rng.integers(0, 6 * 3600_000, n))
    behind = rng.random(n) < 0.05
    base[behind] -= rng.integers(0, 90_000, int(behind.sum()))  # some events a little behind
    base[::50] = base[1::50][: len(base[::50])]  # identical timestamps
    return pd.DataFrame(
        {
            "entity": rng.choice(["a", "b", "c", "d", "e"], n, p=[0.4, 0.3, 0.2, 0.05, 0.05]),
            "time_ms": np.maximum(base, 0).astype(np.int64) + 1_700_000_000_000,
            "amount": np.round(rng.lognormal(3, 1.2, n), 2),
            "merchant": rng.choice([f"m{i}" for i in range(12)], n),
        }
    )


def _stream_reads(state: ViewState, events: pd.DataFrame) -> Iterator[tuple[pd.DataFrame, str, int, np.ndarray]]:
    """The stream path: ``events`` applied in arrival order in 40 batches; after each, every entity seen so
    far read as of its newest event: (events so far, entity, that event's time, the entity's feature row)."""
    for part in np.array_split(np.arange(len(events)), 40):
        state.apply(*_inputs(state, events.iloc[part]))
        seen = events.iloc[: part[-1] + 1]
        rows = state.entity_rows(sorted(seen["entity"].unique()))
        got = state.read(rows)
        for i, row in enumerate(rows):
            entity = state.ids[int(row)]
            assert entity is not None
            yield seen, entity, int(state.max_t[row]), got[i]


def _inputs(state: ViewState, frame: pd.DataFrame) -> tuple[np.ndarray, ...]:
    plan = state.plan
    rows = state.entity_rows(frame["entity"].tolist())
    values = (
        frame[list(plan.numeric_columns)].to_numpy(np.float64) if plan.numeric_columns else np.zeros((len(frame), 0))
    )
    distinct = state.value_ids(frame[plan.distinct_column].tolist()) if plan.distinct_column else None
    return rows, frame["time_ms"].to_numpy(np.int64), values, distinct  # type: ignore[return-value]


def _close(a: float, b: float) -> bool:
    return bool((np.isnan(a) and np.isnan(b)) or np.isclose(a, b, rtol=1e-9, atol=1e-9))


CASES = [
    (fn, w, s)
    for fn in FUNCTIONS
    for w in WINDOWS
    for s in SLIDES
    if fn != "seconds_since_previous" or (w, s) == ("1m", "1m")
]


@pytest.mark.parametrize(("function", "window", "slide"), CASES)
def test_stream_path_matches_reference(function: str, window: str, slide: str) -> None:
    """After every batch, each entity's value as of its newest event equals the reference over the events
    seen so far: what the online store holds between batches."""
    plan = _plan(function, WINDOWS[window], SLIDES[slide])
    events = _events(seed=zlib.crc32(f"{function}{window}{slide}".encode()), n=1500)
    state = ViewState(plan, capacity=2, distinct_capacity=2)  # tiny: growth is exercised too
    name = "f"
    col = plan.feature_names.index(name)
    for seen, entity, t_ms, got in _stream_reads(state, events):
        want = reference_at(plan, seen, entity, t_ms)[name]
        assert _close(got[col], want), (entity, len(seen), got[col], want)


@pytest.mark.parametrize(("function", "window", "slide"), CASES)
def test_batch_path_matches_reference_at_every_event(function: str, window: str, slide: str) -> None:
    plan = _plan(function, WINDOWS[window], SLIDES[slide])
    events = _events(seed=1 + zlib.crc32(f"{function}{window}{slide}".encode()), n=1200)
    ordered = events.sort_values(["entity", "time_ms"], kind="stable").reset_index(drop=True)
    state = ViewState(plan, capacity=2, distinct_capacity=2)
    out, status = state.apply_and_read(*_inputs(state, ordered))
    assert (status == 0).all()
    name = "f"
    col = plan.feature_names.index(name)
    # After the last event of each (entity, instant), the row is the value as of that instant.
    last = ~ordered.duplicated(["entity", "time_ms"], keep="last")
    for i in np.nonzero(last.to_numpy())[0][::7]:
        entity, t = ordered.at[i, "entity"], int(ordered.at[i, "time_ms"])
        want = reference_at(plan, events, entity, t)[name]
        assert _close(out[i, col], want), (entity, t, out[i, col], want)


def test_both_paths_end_in_the_same_state() -> None:
    aggs = [
        SimpleNamespace(
            column="amount", function=fn, time_window=w, slide_interval=timedelta(minutes=1), name=f"{fn}{k}"
        )
        for k, w in WINDOWS.items()
        for fn in ("count", "sum", "mean", "min", "max")
    ]
    plan = compile_view("v", "entity", aggs, [("since", {"streamscore.aggregate": "seconds_since_previous"})])
    events = _events(seed=7)
    stream, batch = ViewState(plan), ViewState(plan)
    stream.apply(*_inputs(stream, events))
    batch.apply_and_read(*_inputs(batch, events.sort_values(["entity", "time_ms"], kind="stable")))
    keys = sorted(events["entity"].unique())
    np.testing.assert_allclose(stream.read(stream.entity_rows(keys)), batch.read(batch.entity_rows(keys)), rtol=1e-9)


def test_an_event_older_than_the_ring_is_reported_not_applied() -> None:
    plan = _plan("count", WINDOWS["5m"], SLIDES["1m"])
    state = ViewState(plan)
    rows = state.entity_rows(["a", "a"])
    status = state.apply(rows, np.array([10 * 3600_000, 3600_000]), np.array([[1.0], [2.0]]))
    assert status.tolist() == [0, 1]
    assert state.read(rows[:1])[0, 0] == 1


@pytest.mark.parametrize(("gap_tiles", "known"), [(119, True), (120, False)])
def test_seconds_since_previous_is_bounded_by_the_ring(gap_tiles: int, known: bool) -> None:
    """The previous event counts while its tile is inside the ring (here 2 h of one-minute tiles): a gap
    older than that could not be known after a recovery from the last ring of events, so it is null."""
    plan = _plan("seconds_since_previous", WINDOWS["1m"], SLIDES["1m"])
    assert plan.n_tiles == 120
    t0 = 1_700_000_000_000 // 60_000 * 60_000 + 59_000  # late in its tile: the gap is not a whole multiple
    times = np.array([t0, t0 + gap_tiles * 60_000 - 30_000], np.int64)
    events = pd.DataFrame({"entity": ["a", "a"], "time_ms": times, "amount": [1.0, 2.0]})
    want = reference_at(plan, events, "a", int(times[1]))["f"]
    assert np.isnan(want) != known
    col = plan.feature_names.index("f")
    for order in ([0, 1], [1, 0]):  # in order, and the previous event arriving last
        stream = ViewState(plan)
        stream.apply(*_inputs(stream, events.iloc[order]))
        assert _close(stream.read(stream.entity_rows(["a"]))[0, col], want)
    batch = ViewState(plan)
    out, _ = batch.apply_and_read(*_inputs(batch, events))
    assert _close(out[1, col], want)
    if known:
        assert out[1, col] == (gap_tiles * 60_000 - 30_000) / 1000.0


def _wide_plan(slide: timedelta) -> ViewPlan:
    aggs = [
        SimpleNamespace(column="amount", function=fn, time_window=w, slide_interval=slide, name=f"{fn}_{label}")
        for label, w in WINDOWS.items()
        for fn in ("sum", "mean")
    ]
    ring = SimpleNamespace(column="amount", function="count", time_window=timedelta(hours=2), slide_interval=slide)
    ring.name = "ring"
    return compile_view("v", "entity", [*aggs, ring])


def _wide_events(seed: int) -> pd.DataFrame:
    """``_events`` with amounts log-uniform over 1e-2 ... 1e12, plus entities where huge amounts leave the
    windows while small ones stay: ``x`` one 1e12, ``y`` one 1e20, ``z`` +1e12 and -1e12 tiles apart (they
    leave a 10 s slide's windows in the same step, when the running sum had already cancelled them)."""
    rng = np.random.default_rng(seed)
    events = _events(seed, n=1500)
    events["amount"] = 10.0 ** rng.uniform(-2, 12, len(events))
    t0 = int(events["time_ms"].min())
    spikes = []
    for entity, huge in [("x", [1e12]), ("y", [1e20]), ("z", [1e12, -1e12])]:
        small = t0 + 60_000 + 37_000 * np.arange(240)  # 37 s apart for ~2.5 h: past every window's end
        spikes.append(
            pd.DataFrame(
                {
                    "entity": entity,
                    "time_ms": np.concatenate([t0 + 5_000 + 20_000 * np.arange(len(huge)), small]),
                    "amount": np.concatenate([huge, rng.choice([0.01, 0.02, 0.03, 12.5], len(small))]),
                    "merchant": "m0",
                }
            )
        )
    extra = pd.concat(spikes, ignore_index=True)
    # In arrival order: each spike event after the random events with an earlier time.
    position = np.searchsorted(np.maximum.accumulate(events["time_ms"].to_numpy()), extra["time_ms"]) - 0.5
    order = np.argsort(np.concatenate([np.arange(len(events)), position]), kind="stable")
    return pd.concat([events, extra], ignore_index=True).iloc[order].reset_index(drop=True)


def _assert_sums_within_float64_error(
    plan: ViewPlan, events: pd.DataFrame, magnitudes: pd.DataFrame, entity: str, t_ms: int, got: np.ndarray
) -> None:
    """Each sum and mean equals the reference within 1e-9 of the same feature over the absolute amounts in
    the window: summing n doubles errs by at most ~n·2⁻⁵³ of that, whatever amounts left the window before."""
    want = reference_at(plan, events, entity, t_ms)
    scale = reference_at(plan, magnitudes, entity, t_ms)
    for f, name in enumerate(plan.feature_names):
        if name == "ring":
            continue
        assert (np.isnan(got[f]) and np.isnan(want[name])) or abs(got[f] - want[name]) <= 1e-9 * scale[name], (
            entity, t_ms, name, got[f], want[name], scale[name],
        )  # fmt: skip


@pytest.mark.parametrize("slide", SLIDES)
@pytest.mark.parametrize("path", ["stream", "batch"])
def test_sums_stay_exact_when_large_amounts_leave_the_window(path: str, slide: str) -> None:
    """Running sums add entering tiles and subtract leaving ones: after (1e12 + 0.01 + 0.02) - 1e12 only
    ~0.03 ± 1e-4 would remain, after (1e20 + 12.5) - 1e20 nothing."""
    plan = _wide_plan(SLIDES[slide])
    events = _wide_events(seed=zlib.crc32(slide.encode()))
    magnitudes = events.assign(amount=events["amount"].abs())
    state = ViewState(plan, capacity=2)
    if path == "stream":
        for seen, entity, t_ms, got in _stream_reads(state, events):
            _assert_sums_within_float64_error(plan, seen, magnitudes, entity, t_ms, got)
        return
    ordered = events.sort_values(["entity", "time_ms"], kind="stable").reset_index(drop=True)
    out, status = state.apply_and_read(*_inputs(state, ordered))
    assert (status == 0).all()
    last = ~ordered.duplicated(["entity", "time_ms"], keep="last")
    for i in np.nonzero(last.to_numpy())[0][::3]:
        entity, t = ordered.at[i, "entity"], int(ordered.at[i, "time_ms"])
        _assert_sums_within_float64_error(plan, events, magnitudes, entity, t, out[i])


@pytest.mark.parametrize("restored", [False, True], ids=["live", "restored"])
def test_a_small_sum_is_exact_after_a_huge_amount_left(restored: bool) -> None:
    """The issue's examples, read after the huge amount's tile left the 5 min window; ``restored`` packs the
    state while the huge amount is inside (the packed sum is rounded) and goes on from the restored copy."""
    plan = _wide_plan(SLIDES["1m"])
    t0 = 1_700_000_000_000
    events = pd.DataFrame(
        {
            "entity": ["a", "a", "a", "b", "b"],
            "time_ms": [t0, t0 + 120_000, t0 + 180_000, t0, t0 + 120_000],
            "amount": [1e12, 0.01, 0.02, 1e20, 12.5],
        }
    )
    later = pd.DataFrame({"entity": ["a", "b"], "time_ms": [t0 + 300_000] * 2, "amount": [0.0, 0.0]})
    state = ViewState(plan)
    state.apply(*_inputs(state, events))
    if restored:
        copy = ViewState(plan)
        copy.restore(["a", "b"], state.pack(["a", "b"]))
        state = copy
    state.apply(*_inputs(state, later))
    got = state.read(state.entity_rows(["a", "b"]))[:, plan.feature_names.index("sum_5m")]
    assert got.tolist() == [0.01 + 0.02, 12.5]
