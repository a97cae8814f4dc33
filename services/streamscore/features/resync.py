"""Noticing that the online store lost data, so the processor can write it again from its state.

Redis loses acknowledged writes in ways no error reports: a restart without its append-only file, a
``FLUSHALL``, an eviction, or the last second of writes under ``appendfsync everysec``. Left alone, an
entity would stay missing (or stale) until its next event, and the workers would score it with defaults.

So each feature-processor partition keeps a marker key in Redis holding the server's ``run_id`` at the time
its entities were last written in full. A marker that is missing (flushed, evicted, deleted by
``streamscore features resync``) or holds another run id (Redis restarted: whatever it reloaded may lack
its last writes) means the partition's entities must be rewritten from the state, which is exact. The
partition's owner checks its markers on every checkpoint round, rewrites, then sets them again; so the
repair needs no coordination between processors, and a resync is just deleting the markers.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

__all__ = ["OnlineMarkers"]

_PREFIX = "streamscore:online-marker:"


class OnlineMarkers:
    """The markers of one processor group (``group``) in one Redis."""

    def __init__(self, client: redis.Redis[bytes], group: str) -> None:
        self.client = client
        self.group = group

    def _key(self, stage: str, partition: int) -> str:
        return f"{_PREFIX}{self.group}:{stage}:{partition}"

    def run_id(self) -> str:
        return str(self.client.info("server")["run_id"])

    def stale(self, partitions: Sequence[tuple[str, int]], run_id: str) -> list[tuple[str, int]]:
        """The (stage, partition) pairs whose entities Redis may have lost since they were written in full."""
        if not partitions:
            return []
        held = self.client.mget([self._key(stage, p) for stage, p in partitions])
        return [key for key, value in zip(partitions, held, strict=True) if value is None or value.decode() != run_id]

    def mark(self, stage: str, partition: int, run_id: str) -> None:
        self.client.set(self._key(stage, partition), run_id)

    def marked(self, run_id: str) -> int:
        """How many partitions are written in full for this run of Redis."""
        keys = list(self.client.scan_iter(match=f"{_PREFIX}{self.group}:*", count=1000))
        values = self.client.mget(keys) if keys else []
        return sum(1 for v in values if v is not None and v.decode() == run_id)

    def clear(self) -> int:
        """Delete every marker of the group (a resync request); returns how many there were."""
        keys = list(self.client.scan_iter(match=f"{_PREFIX}{self.group}:*", count=1000))
        return int(self.client.delete(*keys)) if keys else 0
