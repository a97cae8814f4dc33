"""`streamscore stack up|down|status`: the local Kafka, Redis and Prometheus, started and stopped idempotently."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from streamscore.settings import Settings
from streamscore.stack.components import Component, KafkaComponent, PrometheusComponent, RedisComponent, StackError
from streamscore.stack.process import ManagedProcess

__all__ = ["ComponentStatus", "Stack"]

State = Literal["running", "started", "external", "stopped", "unhealthy"]


@dataclass(frozen=True)
class ComponentStatus:
    """``running``: ours and healthy; ``started``: ours, started by this call; ``external``: answering but
    not started by us (left alone by ``down``); ``unhealthy``: our process is alive but does not answer."""

    name: str
    state: State
    address: str
    version: str | None
    pid: int | None
    log: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Stack:
    def __init__(self, settings: Settings, *, on_event: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.components: list[Component] = [KafkaComponent(settings), RedisComponent(settings)]
        if settings.stack.prometheus:
            self.components.append(PrometheusComponent(settings))
        self.run_dir = settings.data_dir / "run"
        self._say = on_event or (lambda _msg: None)

    def _process(self, component: Component) -> ManagedProcess:
        return ManagedProcess(component.name, self.run_dir)

    def _status(self, component: Component, *, probe_timeout_s: float = 2.0) -> ComponentStatus:
        rec = self._process(component).running()
        version = component.probe(probe_timeout_s)
        if rec is not None:
            state: State = "running" if version is not None else "unhealthy"
            return ComponentStatus(component.name, state, component.address, rec.version, rec.pid, rec.log)
        if version is not None:
            return ComponentStatus(component.name, "external", component.address, version, None, "")
        return ComponentStatus(component.name, "stopped", component.address, None, None, str(component.log))

    def status(self) -> list[ComponentStatus]:
        return [self._status(c) for c in self.components]

    def up(self) -> list[ComponentStatus]:
        results = []
        for component in self.components:
            current = self._status(component, probe_timeout_s=1.0)
            if current.state in ("running", "external"):
                self._say(f"{component.name}: already {current.state} at {current.address}")
                results.append(current)
                continue
            if current.state == "unhealthy":
                results.append(self._wait_healthy(component))
                continue
            self._say(f"{component.name}: preparing")
            component.prepare()
            self._say(f"{component.name}: starting on {component.address}")
            self._process(component).start(
                component.argv(),
                log=component.log,
                version=component.version,
                address=component.address,
            )
            status = self._wait_healthy(component)
            results.append(ComponentStatus(**{**status.as_dict(), "state": "started"}))
        return results

    def _wait_healthy(self, component: Component) -> ComponentStatus:
        process = self._process(component)
        deadline = time.monotonic() + self.settings.stack.start_timeout_s
        while time.monotonic() < deadline:
            code = process.exit_code()
            if code is not None or process.running() is None:
                process.pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"{component.name} exited (code {code}) while starting on {component.address}; see {component.log}"
                )
            status = self._status(component, probe_timeout_s=1.0)
            if status.state == "running":
                return status
            time.sleep(0.25)
        raise StackError(
            f"{component.name} did not answer on {component.address} within "
            f"{self.settings.stack.start_timeout_s:.0f}s; see {component.log}"
        )

    def down(self, *, wipe: bool = False) -> list[tuple[str, str]]:
        """Stop what we started (pid files only); with ``wipe`` also delete their data."""
        outcome = []
        for component in reversed(self.components):
            stopped = self._process(component).stop()
            outcome.append((component.name, "stopped" if stopped else "not running (ours)"))
            if wipe:
                shutil.rmtree(component.root, ignore_errors=True)
        return outcome
