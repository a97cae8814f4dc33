"""Background processes that the stack started, tracked by pid file so `down` stops only its own.

A pid file alone is not proof: after a reboot the pid may belong to someone else. We also record the
process start time (``/proc/<pid>/stat`` field 22) and compare it before trusting or signalling a pid; the
command line is no help, because servers such as Redis rewrite their process title.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["ManagedProcess", "PidRecord"]


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_ticks: int
    argv: list[str]
    version: str
    address: str
    log: str
    started_at: float


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may itself contain spaces)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    # Field 3 (state) is fields[0], so field 22 (starttime) is fields[19]; a zombie counts as gone.
    return None if fields is None or fields[0] == "Z" else int(fields[19])


class ManagedProcess:
    """One named background process with a JSON pid file under ``run_dir``."""

    def __init__(self, name: str, run_dir: Path) -> None:
        self.name = name
        self.pid_file = run_dir / f"{name}.pid.json"

    def record(self) -> PidRecord | None:
        try:
            return PidRecord(**json.loads(self.pid_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def running(self) -> PidRecord | None:
        """The pid record if that process is alive and is still the command we started."""
        rec = self.record()
        if rec is None:
            return None
        return rec if _start_ticks(rec.pid) == rec.start_ticks else None

    def start(self, argv: list[str], *, log: Path, version: str, address: str) -> PidRecord:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        # posix_spawn rather than Popen: the server must outlive this CLI, so no Popen object should own
        # it, and setsid keeps the terminal's Ctrl-C away from it.
        pid = os.posix_spawn(
            argv[0],
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
        rec = PidRecord(pid, _start_ticks(pid) or 0, argv, version, address, str(log), time.time())
        self.pid_file.write_text(json.dumps(asdict(rec)))
        return rec

    def exit_code(self) -> int | None:
        """Reap our child if it already died (only possible from the process that started it)."""
        rec = self.record()
        if rec is None:
            return None
        try:
            pid, status = os.waitpid(rec.pid, os.WNOHANG)
        except ChildProcessError:
            return None
        return os.waitstatus_to_exitcode(status) if pid else None

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns whether a process of ours was stopped."""
        rec = self.running()
        if rec is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(rec.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.running():
            self.exit_code()
            time.sleep(0.1)
        if self.running():
            os.kill(rec.pid, signal.SIGKILL)
            while self.running():
                self.exit_code()
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True
