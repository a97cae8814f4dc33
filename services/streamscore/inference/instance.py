"""A worker's stable name: the same after a crash and restart, different for every live worker on a host.

Kafka recognises a worker across restarts by two ids. The producer's ``transactional.id``: a restarted worker
that reuses it fences its dead predecessor and aborts the transaction that one left open, which otherwise
blocks every ``read_committed`` reader of those partitions until ``transaction.timeout.ms``. And the
consumer's ``group.instance.id`` (static membership): a restarted worker takes its partitions back at once
instead of waiting for the group to time the old member out. Both need a name that survives the process but
is never held by two live processes, which a pid is not.

So each worker on a host takes the lowest free *slot* ``i`` of its consumer group by holding an exclusive
``flock`` on ``<data dir>/inference/<group>.<i>.lock`` for its lifetime; the kernel drops the lock when the
process dies, however it dies, so the next worker to start gets the same slot. The name is ``<host>-<i>``.
"""

from __future__ import annotations

import fcntl
import re
import socket
from pathlib import Path
from typing import IO

__all__ = ["Instance", "claim_instance"]

_MAX_SLOTS = 1024


class Instance:
    """A claimed name; :meth:`release` (or the process ending) frees the slot."""

    def __init__(self, name: str, lock: IO[bytes] | None) -> None:
        self.name = name
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def claim_instance(data_dir: Path, group_id: str, *, host: str | None = None) -> Instance:
    """The lowest free slot of ``group_id`` on this host, held until released or the process exits."""
    folder = data_dir / "inference"
    folder.mkdir(parents=True, exist_ok=True)
    safe_group = re.sub(r"[^A-Za-z0-9_.-]", "_", group_id)
    host = host or socket.gethostname()
    for slot in range(_MAX_SLOTS):
        lock = (folder / f"{safe_group}.{slot}.lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return Instance(f"{host}-{slot}", lock)
    raise RuntimeError(f"{_MAX_SLOTS} workers of group {group_id!r} already run on this host")
