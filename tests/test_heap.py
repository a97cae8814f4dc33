"""Start-up objects frozen out of the collector's walks, and every collection of generations 1 and 2 timed."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from streamscore.heap import _time_collection, freeze_startup_heap


@pytest.fixture
def frozen() -> Iterator[int]:
    try:
        yield freeze_startup_heap()
    finally:
        gc.unfreeze()
        gc.callbacks.remove(_time_collection)


def _pauses(generation: int) -> float:
    return REGISTRY.get_sample_value("streamscore_gc_pause_seconds_count", {"generation": str(generation)}) or 0.0


def test_what_lives_at_start_up_is_frozen_and_later_objects_are_not(frozen: int) -> None:
    assert frozen > 10_000  # this process's imports, at least
    later = [[i] for i in range(1_000)]
    tracked = {id(o) for o in gc.get_objects()}
    assert id(later) in tracked  # made after the freeze: the collector still sees it
    assert id(gc) not in tracked  # a module object from start-up: frozen, out of every generation


def test_collections_of_generations_one_and_two_are_timed(frozen: int) -> None:
    before = {g: _pauses(g) for g in (0, 1, 2)}
    gc.collect(1)
    gc.collect(2)
    gc.collect(0)
    assert _pauses(1) == before[1] + 1
    assert _pauses(2) == before[2] + 1
    assert _pauses(0) == before[0] == 0  # generation 0 is too frequent and short to be worth a sample


def test_freezing_twice_times_each_collection_once(frozen: int) -> None:
    freeze_startup_heap()
    before = _pauses(2)
    gc.collect(2)
    assert _pauses(2) == before + 1
