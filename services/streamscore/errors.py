"""Errors a user can act on. The CLI prints them as one line (no traceback) and exits with ``exit_code``."""

from __future__ import annotations

__all__ = ["KafkaUnavailable", "StreamscoreError"]


class StreamscoreError(Exception):
    exit_code = 1


class KafkaUnavailable(StreamscoreError):
    """The brokers did not answer in time."""

    def __init__(self, bootstrap: str, detail: str) -> None:
        super().__init__(
            f"cannot reach Kafka at {bootstrap}: {detail}; is it running? (`streamscore stack up` starts one)"
        )
