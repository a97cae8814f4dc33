"""Child processes of our own commands: the CLI's `inference run --workers N` and the demo's services.

Every child is ``python -m streamscore ...`` with the parent's settings handed down through the environment
(:func:`~streamscore.settings.child_env`), so a child reads exactly the settings its parent resolved. Stopping
is SIGTERM first: each service finishes the batch in hand, commits and exits; SIGKILL only after a grace
period. The stack's own servers (Kafka, Redis, Prometheus) are a different thing: they outlive the command
that started them and are tracked by pid file (:mod:`streamscore.stack.process`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["run_together", "spawn", "stop_all", "wait_for_line"]


def spawn(args: Sequence[str], env: Mapping[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """``python -m streamscore ARGS``; output appended to ``log`` (or inherited when None)."""
    command = [sys.executable, "-m", "streamscore", *args]
    if log is None:
        return subprocess.Popen(command, env=dict(env))
    with log.open("ab") as out:
        return subprocess.Popen(command, env=dict(env), stdout=out, stderr=subprocess.STDOUT)


def wait_for_line(proc: subprocess.Popen[bytes], log: Path, offset: int, text: str, timeout_s: float) -> None:
    """Until ``text`` appears in ``log`` after ``offset`` (the log's size when the process started)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the process logging to {log} exited with {proc.returncode}")
        with log.open("rb") as f:
            f.seek(offset)
            if text.encode() in f.read():
                return
        time.sleep(0.2)
    raise RuntimeError(f"no {text!r} in {log} within {timeout_s:.0f}s")


def stop_all(
    procs: Mapping[str, subprocess.Popen[bytes]],
    timeout_s: float = 60.0,
    on_kill: Callable[[str], None] | None = None,
) -> None:
    """SIGTERM (each commits and exits cleanly), then SIGKILL for any that has not exited in ``timeout_s``."""
    for proc in procs.values():
        proc.terminate()
    deadline = time.monotonic() + timeout_s
    for name, proc in procs.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            if on_kill is not None:
                on_kill(name)
            proc.kill()
            proc.wait()


def run_together(args: Sequence[str], envs: Sequence[Mapping[str, str]]) -> int:
    """One child per environment, all running ``args``, until they exit; SIGTERM and SIGINT reach every one.
    Returns the highest exit status (0 when all ended cleanly)."""
    procs = [spawn(args, env) for env in envs]

    def forward(signum: int, _: Any) -> None:
        for proc in procs:
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(proc.wait() for proc in procs)
