from __future__ import annotations

from dataclasses import dataclass

from streamscore.kafka import next_offsets


@dataclass
class FakeMessage:
    """Stands in for confluent_kafka.Message, which cannot be built outside the client."""

    t: str
    p: int
    o: int

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o


def test_commits_one_past_the_highest_offset_per_partition() -> None:
    msgs = [FakeMessage("a", 0, 5), FakeMessage("a", 0, 3), FakeMessage("a", 1, 9), FakeMessage("b", 0, 0)]
    assert [(tp.topic, tp.partition, tp.offset) for tp in next_offsets(msgs)] == [
        ("a", 0, 6),
        ("a", 1, 10),
        ("b", 0, 1),
    ]


def test_empty_batch_commits_nothing() -> None:
    assert next_offsets([]) == []
