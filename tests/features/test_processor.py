"""The processor's delivery contract in one process, against the real broker: an output the broker refused
stops every later checkpoint, whichever stage's round finds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamscore.features import load_plans, rules_for
from streamscore.features.processor import FeatureProcessor
from streamscore.kafka import DeliveryError, ensure_topics
from streamscore.settings import Settings
from streamscore.store import apply_definitions
from tests.features.harness import isolated_run

pytestmark = pytest.mark.integration


def test_a_failed_forward_found_by_a_checkpoint_poisons_the_processor(settings: Settings, tmp_path: Path) -> None:
    """The kafka engine leaves a batch's acks to the next checkpoint. When that round's flush raises, the
    producer has handed over its failures: a second round would flush clean and write a state (and commit an
    offset) past the lost forward, unless the first one marked the processor poisoned."""
    s = isolated_run(settings, tmp_path, f"poison-{tmp_path.name[-10:]}".replace("_", "-"), redis_db=13)
    ensure_topics(s)
    apply_definitions(s)
    plans = load_plans(s)
    processor = FeatureProcessor(s, plans, rules_for(s, plans))
    try:
        # A forward the broker can never take: a partition the re-keyed topic does not have.
        processor.producer.send(s.topics.transactions_by_merchant, b"lost", key=b"m1", partition=999)
        assert not processor.poisoned
        with pytest.raises(DeliveryError):
            processor.checkpoint()
        assert processor.poisoned  # the engines take no further checkpoint of a poisoned processor
        processor.producer.flush()  # the failure was reported once: a later flush alone would pass
    finally:
        processor.writer.close()
