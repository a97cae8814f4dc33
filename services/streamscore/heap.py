"""The garbage collector kept out of a long-running service's latency tail.

A full (generation 2) collection walks every container object the process holds, and a service holds
hundreds of thousands from its imports alone (feast, pandas, pyarrow, onnxruntime, confluent-kafka: 246,000 in
the feature processor). Measured in the kafka engine at 10,000 events/s: a full collection every 2-3 s, each
stopping every thread for 200-460 ms, which was most of the freshness p99. Those objects live as long as the
process does, so :func:`freeze_startup_heap`, called once a service has started, moves them out of the
collector's sight (``gc.freeze``); the collections that remain walk what the service made since: 15-45 ms in
the same run. A frozen object freed by reference counting is freed as usual; one that would need the cycle
collector is not, so a service that replaces a long-lived object (the inference worker's model) calls
:func:`refreeze_heap` afterwards: one full collection then, instead of one every few seconds.

Every collection of generations 1 and 2 is timed into ``streamscore_gc_pause_seconds`` (generation 0, a few
hundred microseconds and thousands a second, is not), so a dashboard shows what the interpreter costs the tail.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

__all__ = ["GC_PAUSE", "freeze_startup_heap", "refreeze_heap"]

GC_PAUSE = Histogram(
    "streamscore_gc_pause_seconds",
    "Time every thread stood still for a garbage collection of generation 1 or 2",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

# Children made once: the callback may run inside any allocation, also in a scrape thread holding the parent's
# (non-reentrant) lock while it copies its children, where ``GC_PAUSE.labels()`` would wait forever.
_PAUSES = {generation: GC_PAUSE.labels(str(generation)) for generation in (1, 2)}
_started = [0.0]


def _time_collection(phase: str, info: dict[str, Any]) -> None:
    # The collector runs one collection at a time with the GIL held: one start time is enough.
    if info["generation"] == 0:
        return
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _PAUSES[info["generation"]].observe(time.perf_counter() - _started[0])


def freeze_startup_heap() -> int:
    """Collect once, freeze what is left (imports, clients, the loaded model) and time collections from now on.

    Call it when start-up is over and before the first input, so the one full collection it runs is not on an
    event's path. Returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    if _time_collection not in gc.callbacks:
        gc.callbacks.append(_time_collection)
    return gc.get_freeze_count()


def refreeze_heap() -> int:
    """Unfreeze, collect and freeze again: after a long-lived object frozen with the heap was replaced, so that
    it is collected even if it sits in a reference cycle. Returns the number of objects frozen."""
    gc.unfreeze()
    return freeze_startup_heap()
