"""What happens, in event-time order: ordinary purchases, fraud bursts, and the drift that changes both.

Events are drawn a block at a time into one structured array (:data:`EVENT_DTYPE`), each block from its
own random stream ``(seed, purpose, block)``, so a stream of any length is produced in bounded memory and
is the same however its consumer chunks it. A fraud burst may run past the end of the ordinary events of
its block; its tail waits and is merged into the next block, which keeps every block in event-time order.

Ordinary and fraud events come from one stream of random draws whose consumption does not depend on
``drift_at``: before the drift moment a drifted stream is identical to an undrifted one, so a test or a
drift detector sees the change and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

from streamscore.generator.arrivals import DiurnalClock
from streamscore.generator.config import GeneratorConfig
from streamscore.generator.profiles import ECOM, Population

__all__ = ["BLOCK", "EVENT_DTYPE", "event_time_blocks"]

EVENT_DTYPE = np.dtype(
    [
        ("seq", np.int64),  # position in event-time order; breaks emission-order ties deterministically
        ("event_ms", np.int64),
        ("emit_ms", np.int64),  # when it is emitted, in stream time; set by streamscore.generator.disorder
        ("user", np.int32),
        ("merchant", np.int32),
        ("amount", np.float64),
        ("channel", np.int8),
        ("fraud", np.bool_),
        ("id", np.uint8, (16,)),  # UUID bytes
    ]
)

# Part of the stream's definition: changing it changes every stream (the random draws are per block).
BLOCK = 8192
_EVENTS_STREAM = 0xE7

_BURST_MIN, _BURST_MAX = 3, 10
_BURST_GAP_MS = 25_000.0  # mean time between a burst's transactions: ten of them take about four minutes
_FRAUD_CHANNEL_CDF = np.cumsum([0.15, 0.65, 0.10, 0.10])  # POS, ECOM, ATM, MOTO: card-not-present dominates
_FRAUD_BOOST = 1.0  # log-mean shift: fraud amounts are ~2.7x the card holder's usual

_DRIFT_AMOUNT = 2.5
_DRIFT_TO_ECOM = 0.4  # share of post-drift ordinary events that move to ECOM whatever the user preferred
_DRIFT_NEW_MERCHANT = 0.3  # share of post-drift ordinary events at merchants that did not exist before


def event_time_blocks(config: GeneratorConfig, people: Population) -> Iterator[NDArray[np.void]]:
    """Blocks of events in event-time order, ``seq`` numbered and ``id`` filled; ``emit_ms`` is unset.

    Every event of a block is at or before every event of the following blocks.
    """
    clock = DiurnalClock(config.rate, config.start_ms)
    drift_ms = config.drift_ms
    made = fraud_made = seq = 0
    waiting = np.zeros(0, dtype=EVENT_DTYPE)  # burst tails beyond the current block
    block = 0
    while made < config.events:
        rng = np.random.default_rng((config.seed, _EVENTS_STREAM, block))
        size = min(BLOCK, config.events - made)
        made += size
        bursts = _burst_sizes(rng, config.fraud_rate * made - fraud_made, room=size - 1)
        fraud_made += int(bursts.sum())
        ordinary = _ordinary(rng, people, clock.next_ms(rng.exponential(size=size - int(bursts.sum()))), drift_ms)
        fraud = _fraud_bursts(rng, people, ordinary["event_ms"], bursts, drift_ms)

        merged = np.concatenate([waiting, ordinary, fraud])
        merged = merged[np.argsort(merged["event_ms"], kind="stable")]
        if made < config.events:
            cut = int(np.searchsorted(merged["event_ms"], ordinary["event_ms"][-1], side="right"))
        else:
            cut = len(merged)
        released, waiting = merged[:cut], merged[cut:]
        released["seq"] = seq + np.arange(len(released))
        released["id"] = _uuid4(rng, len(released))
        seq += len(released)
        block += 1
        yield released


def _burst_sizes(rng: np.random.Generator, owed: float, *, room: int) -> NDArray[np.int64]:
    """Sizes of the bursts to start in a block, given how many fraud events the stream is behind on.

    A burst starts once at least half of it is owed, so the fraud count tracks ``fraud_rate`` to within
    half a burst, and a stream too short to owe half a burst has none. ``room`` caps the block's total.
    """
    if owed < _BURST_MIN / 2 or room < _BURST_MIN:
        return np.zeros(0, dtype=np.int64)
    candidates = rng.integers(_BURST_MIN, _BURST_MAX + 1, int(owed // _BURST_MIN) + 2)
    ends = np.cumsum(candidates)
    keep = (ends - candidates / 2 <= owed) & (ends <= room)  # both hold on a prefix: ends only grow
    sizes: NDArray[np.int64] = candidates[: int(keep.sum())]
    return sizes


def _ordinary(
    rng: np.random.Generator, people: Population, times_ms: NDArray[np.int64], drift_ms: int | None
) -> NDArray[np.void]:
    n = len(times_ms)
    out = np.zeros(n, dtype=EVENT_DTYPE)
    drifted = times_ms >= drift_ms if drift_ms is not None else np.zeros(n, dtype=np.bool_)
    users = people.pick_users(rng, n)
    channels = people.pick_channels(rng, users)
    channels[drifted & (rng.random(n) < _DRIFT_TO_ECOM)] = ECOM
    merchants = people.pick_merchants(rng, users)
    amounts = _drift_amounts(people.amounts(rng, users, channels), drifted)
    # Drawn for every event, used only after the drift: the random stream is consumed alike either way.
    newcomers = drifted & (rng.random(n) < _DRIFT_NEW_MERCHANT)
    merchants = np.where(newcomers, people.pick_new_merchants(rng, n), merchants)
    out["event_ms"], out["user"], out["merchant"], out["amount"], out["channel"] = (
        times_ms,
        users,
        merchants,
        amounts,
        channels,
    )
    return out


def _fraud_bursts(
    rng: np.random.Generator,
    people: Population,
    anchors_ms: NDArray[np.int64],
    sizes: NDArray[np.int64],
    drift_ms: int | None,
) -> NDArray[np.void]:
    """A compromised card used in a rapid run at merchants its holder never visits, mostly online."""
    total = int(sizes.sum())
    out = np.zeros(total, dtype=EVENT_DTYPE)
    if total == 0:
        return out
    first = np.cumsum(sizes) - sizes
    gaps = rng.exponential(_BURST_GAP_MS, total)
    gaps[first] = 0.0
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[first], sizes)
    starts = anchors_ms[rng.integers(0, len(anchors_ms), len(sizes))]  # anchored on real traffic: diurnal too
    times_ms = np.repeat(starts, sizes) + elapsed.astype(np.int64)
    users = np.repeat(rng.integers(0, len(people.user_ids), len(sizes)), sizes).astype(np.int32)
    channels = np.minimum(np.searchsorted(_FRAUD_CHANNEL_CDF, rng.random(total), side="right"), 3).astype(np.int8)
    amounts = people.amounts(rng, users, channels, boost=_FRAUD_BOOST)
    amounts[first] = np.round(rng.uniform(0.5, 3.0, len(sizes)), 2)  # a small test purchase comes first
    drifted = times_ms >= drift_ms if drift_ms is not None else np.zeros(total, dtype=np.bool_)
    out["event_ms"], out["user"], out["channel"] = times_ms, users, channels
    out["merchant"] = people.pick_strangers(rng, total)
    out["amount"] = _drift_amounts(amounts, drifted)
    out["fraud"] = True
    return out


def _drift_amounts(amounts: NDArray[np.float64], drifted: NDArray[np.bool_]) -> NDArray[np.float64]:
    return np.where(drifted, np.round(amounts * _DRIFT_AMOUNT, 2), amounts)


def _uuid4(rng: np.random.Generator, n: int) -> NDArray[np.uint8]:
    """Random-looking version-4 UUIDs from the seeded stream: unique in practice, identical on rerun."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return raw
