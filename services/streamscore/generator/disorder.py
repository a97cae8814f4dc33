"""When events are *emitted*: mostly in event-time order, some a few seconds late, a few very late.

Real producers retry, buffer on flaky terminals and batch offline devices, so a stream processor sees
events out of order and some far behind its watermark. Each event gets an emission time ``emit_ms`` =
event time + delay (zero for most, 1 to 5 s for out-of-order ones, 10 to 60 min for late ones), and
events leave in ``emit_ms`` order. A late event therefore shows up when the stream has moved on by its
delay, which is what "10 to 60 minutes older than the stream's current time" means to a consumer.

Delayed events wait in a small buffer until the stream's event time passes their emission time; the
buffer holds about ``rate * (out_of_order_rate * 5 s + late_rate * 60 min)`` events, independent of the
stream's length. Delays come from their own random stream, so changing the disorder rates leaves the
events themselves unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from numpy.typing import NDArray

from streamscore.generator.config import GeneratorConfig
from streamscore.generator.events import EVENT_DTYPE

__all__ = ["LATE_DELAY_MS", "OUT_OF_ORDER_DELAY_MS", "emission_order"]

OUT_OF_ORDER_DELAY_MS = (1_000, 5_000)
LATE_DELAY_MS = (10 * 60_000, 60 * 60_000)
_DISORDER_STREAM = 0xD15


def emission_order(blocks: Iterable[NDArray[np.void]], config: GeneratorConfig) -> Iterator[NDArray[np.void]]:
    """Re-order event-time-ordered blocks (see :func:`~streamscore.generator.events.event_time_blocks`) into
    emission order, setting ``emit_ms``; yields non-empty arrays."""
    held = np.zeros(0, dtype=EVENT_DTYPE)
    for index, block in enumerate(blocks):
        n = len(block)
        if n == 0:
            continue
        rng = np.random.default_rng((config.seed, _DISORDER_STREAM, index))
        roll = rng.random(n)
        late = roll < config.late_rate
        shuffled = ~late & (roll < config.late_rate + config.out_of_order_rate)
        delay = np.where(shuffled, rng.integers(*OUT_OF_ORDER_DELAY_MS, n, endpoint=True), 0)
        delay = np.where(late, rng.integers(*LATE_DELAY_MS, n, endpoint=True), delay)
        block["emit_ms"] = block["event_ms"] + delay

        pool = np.concatenate([held, block])
        pool = pool[np.lexsort((pool["seq"], pool["emit_ms"]))]
        # Later blocks only hold events at or after this block's last event time, and a later event is
        # never emitted before its event time; ties go to the lower seq, i.e. to events already here.
        cut = int(np.searchsorted(pool["emit_ms"], block["event_ms"][-1], side="right"))
        ready, held = pool[:cut], pool[cut:]
        if len(ready):
            yield ready
    if len(held):
        yield held
