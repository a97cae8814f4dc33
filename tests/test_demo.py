from __future__ import annotations

import io

import pytest
from rich.console import Console

from streamscore.demo import run_avro_roundtrip, sample_transactions
from streamscore.settings import Settings

pytestmark = pytest.mark.integration


def test_demo_reads_back_every_event_it_sent(settings: Settings) -> None:
    out = io.StringIO()
    run_avro_roundtrip(settings, events=6, seed=3, console=Console(file=out, width=200))
    text = out.getvalue()
    assert "read back and decoded all 6 events from Kafka" in text
    for record in sample_transactions(6, seed=3):
        assert record["event_id"][:8] in text


def test_sample_transactions_are_deterministic() -> None:
    a, b = sample_transactions(5, 1), sample_transactions(5, 1)
    assert [r["event_id"] for r in a] == [r["event_id"] for r in b]
    assert [r["event_id"] for r in a] != [r["event_id"] for r in sample_transactions(5, 2)]
