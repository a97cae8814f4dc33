"""Each service's /metrics endpoint, and the file through which the local Prometheus finds it.

Several services (a feature processor, N inference workers, the retrainer) run on one host, so a fixed port
per service would collide: each takes the first free port from ``metrics_port`` up and writes a Prometheus
``file_sd`` target file naming it under ``data_dir/prometheus/targets``. Prometheus rereads that directory
by itself, so a service is scraped from its start and dropped at its clean exit; a target file left by a
killed process is removed by the next service that registers on the same host (its pid is gone).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
from pathlib import Path

from prometheus_client import start_http_server

from streamscore.settings import Settings

__all__ = ["PORT_RANGE", "serve_metrics", "target_path", "targets_dir"]

log = logging.getLogger(__name__)

PORT_RANGE = 64  # ports tried from metrics_port up


def targets_dir(settings: Settings) -> Path:
    return settings.data_dir / "prometheus" / "targets"


def target_path(settings: Settings, service: str, pid: int, host: str | None = None) -> Path:
    """The target file of ``service``'s process ``pid`` on ``host`` (default: this host)."""
    # Named by host too: processes in containers sharing a data volume are all pid 1.
    return targets_dir(settings) / f"{service}@{host or socket.gethostname()}@{pid}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prune(directory: Path, host: str) -> None:
    """Drop the target files of this host's processes that are gone (killed without their atexit)."""
    for path in directory.glob(f"*@{host}@*.json"):
        with contextlib.suppress(ValueError, OSError):
            if not _alive(int(path.stem.rsplit("@", 1)[1])):
                path.unlink(missing_ok=True)


def _register(settings: Settings, service: str, port: int) -> Path:
    directory = targets_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    _prune(directory, socket.gethostname())
    host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "::", "") else settings.metrics_host
    path = target_path(settings, service, os.getpid())
    target = [{"targets": [f"{host}:{port}"], "labels": {"service": service, "pid": str(os.getpid())}}]
    partial = path.with_suffix(".tmp")  # Prometheus watches *.json: it must never see half a file
    partial.write_text(json.dumps(target))
    partial.replace(path)
    atexit.register(path.unlink, missing_ok=True)
    return path


def serve_metrics(settings: Settings, service: str) -> int | None:
    """Serve /metrics on the first free port from ``settings.metrics_port``; None when metrics are off."""
    if not settings.metrics_port:
        return None
    last: OSError | None = None
    for port in range(settings.metrics_port, min(settings.metrics_port + PORT_RANGE, 65536)):
        try:
            start_http_server(port, addr=settings.metrics_host)
        except OSError as exc:  # taken by another service on this host
            last = exc
            continue
        _register(settings, service, port)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
        return port
    raise OSError(f"no free metrics port in {settings.metrics_port}..{settings.metrics_port + PORT_RANGE - 1}: {last}")
