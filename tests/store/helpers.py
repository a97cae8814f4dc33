"""Shared by the online writer's and reader's tests."""

from __future__ import annotations

from typing import Any

import redis


class CountingConnection(redis.Connection):
    """A real connection that logs each send and each reply read, in order (one pipelined round trip shows as
    one send, then every read)."""

    events: list[str] = []  # noqa: RUF012 - one log for every connection of the test

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.events.append("send")
        super().send_packed_command(command, check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        self.events.append("read")
        return super().read_response(*args, **kwargs)
