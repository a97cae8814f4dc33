"""Bad bytes end in the dead-letter topic with their reason, their original bytes and the context."""

from __future__ import annotations

import hashlib

import pytest

from streamscore.kafka import DeadLetterPublisher, Producer, read_dead_letter
from streamscore.kafka.deadletter import DEAD_LETTERS
from streamscore.serde import Serde, SerdeError
from streamscore.settings import Settings
from tests.kafka.helpers import create_topic, read_all
from tests.serde.samples import sample_record

pytestmark = pytest.mark.integration


def _bad_payloads() -> dict[str, tuple[bytes, str]]:
    serde = Serde("transaction")
    good = serde.encode(sample_record("transaction"))
    other = Serde("score_request").encode(sample_record("score_request"))
    return {
        "empty": (b"", "truncated"),
        "short-header": (good[:6], "truncated"),
        "cut-body": (good[:-4], "corrupt"),
        "wrong-magic": (b"\x7b" + good[1:], "bad-magic"),
        "unknown-fingerprint": (good[:2] + b"\x00" * 8 + good[10:], "unknown-schema"),
        "registry-framed-without-registry": (b"\x00\x00\x00\x00\x07" + good[10:], "unknown-schema"),
        "trailing-garbage": (good + b"\x01\x02", "corrupt"),
        "other-schema": (other, "incompatible"),  # a known schema that does not resolve into ours
    }


def test_each_kind_of_bad_bytes_is_dead_lettered_with_its_reason(settings: Settings, unique: str) -> None:
    source = create_topic(settings, f"input-{unique}", partitions=1)
    dlq = create_topic(settings, f"dlq-{unique}", partitions=1)
    payloads = _bad_payloads()
    producer = Producer(settings.kafka)
    for name, (value, _) in payloads.items():
        producer.send(source, value, key=name.encode(), headers=[("traceparent", b"00-abc-01")])
    producer.flush()

    serde = Serde("transaction")
    publisher = DeadLetterPublisher(producer, dlq, stage="test-decode")
    before = DEAD_LETTERS.labels(stage="test-decode", reason="truncated")._value.get()
    for msg in read_all(settings, source, len(payloads), group=f"in-{unique}"):
        with pytest.raises(SerdeError) as info:
            serde.decode(msg.value() or b"")
        assert info.value.reason == payloads[msg.key().decode()][1], msg.key()
        publisher.publish(msg, info.value.reason, info.value)
    producer.flush()
    assert DEAD_LETTERS.labels(stage="test-decode", reason="truncated")._value.get() - before == 2

    letters = {
        m.key().decode(): read_dead_letter(m) for m in read_all(settings, dlq, len(payloads), group=f"d-{unique}")
    }
    assert letters.keys() == payloads.keys()
    for name, letter in letters.items():
        value, reason = payloads[name]
        assert letter.reason == reason
        assert letter.value == value  # the original bytes, untouched
        assert letter.key == name.encode()
        assert letter.headers == [("traceparent", b"00-abc-01")]
        assert (letter.topic, letter.partition, letter.stage) == (source, 0, "test-decode")
        assert letter.exception is not None
        assert letter.exception.startswith("SerdeError: ")

    # The typed view is itself a valid DeadLetter record.
    record = letters["cut-body"].to_record()
    dl = Serde("dead_letter")
    assert dl.decode(dl.encode(record))["value"] == payloads["cut-body"][0]


def test_a_message_without_error_headers_is_not_a_dead_letter(settings: Settings, unique: str) -> None:
    topic = create_topic(settings, f"plain-{unique}")
    producer = Producer(settings.kafka)
    producer.send(topic, b"v", key=b"k")
    producer.flush()
    (msg,) = read_all(settings, topic, 1, group=f"g-{unique}")
    with pytest.raises(ValueError, match="not a streamscore dead letter"):
        read_dead_letter(msg)


@pytest.mark.parametrize(
    ("key", "value", "headers", "cut"),
    [
        (b"k", b"v" * 1_046_500, [], b"value"),  # the value alone nearly fills the broker's limit
        (b"k", b"v" * 100, [("trace", b"t" * 1_040_000)], b"headers"),  # huge headers, small value
        (b"k" * 500_000, b"v" * 1_000_000, [("trace", b"t")], b"headers,key,value"),
    ],
)
def test_a_dead_letter_too_large_for_the_broker_is_cut_to_fit_and_says_what_it_was(
    settings: Settings, unique: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]], cut: bytes
) -> None:
    """Before, the broker refused such a dead letter (MSG_SIZE_TOO_LARGE) and its consumer retried forever."""
    dlq = create_topic(settings, f"dlq-{unique}", partitions=1)
    producer = Producer(settings.kafka)
    DeadLetterPublisher(producer, dlq, stage="test").publish_raw("in", 0, 7, key, value, headers, "bad-magic")
    producer.flush()  # raised DeliveryError before
    (msg,) = read_all(settings, dlq, 1, group=f"g-{unique}")
    letter = read_dead_letter(msg)
    got = dict(msg.headers())
    assert letter.reason == "bad-magic"
    assert letter.offset == 7
    assert got["streamscore.error.truncated"] == cut
    assert got["streamscore.error.original-size"] == str(len(value)).encode()
    assert got["streamscore.error.original-sha256"].decode() == hashlib.sha256(value).hexdigest()
    assert value.startswith(letter.value)
    assert letter.headers == []  # the original headers are the first thing left out
