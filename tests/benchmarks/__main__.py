"""Run the benchmarks and print Markdown for BENCHMARKS.md (machine and date included).

``python -m tests.benchmarks`` runs every module; arguments select some (``features``, ``serde``, ``models``,
``reader``, ``inference``, ``locust``, ``state``, ``cli``, ``offline``, ``train``, ``backfill_engines``), and
``features:profile,backfill`` runs only those parts of the feature benchmarks (``backfill_engines:2m``: 2M events).
Progress goes to stderr, the Markdown to stdout.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _serde(parts: list[str] | None) -> str:
    from tests.benchmarks import bench_serde

    return bench_serde.run()


def _features(parts: list[str] | None) -> str:
    from tests.benchmarks import bench_features

    return bench_features.run(parts)


def _models(parts: list[str] | None) -> str:
    from tests.benchmarks import bench_models

    return bench_models.run(parts)


def _reader(parts: list[str] | None) -> str:
    from tests.benchmarks import bench_reader

    return bench_reader.run(parts)


def _inference(parts: list[str] | None) -> str:
    from tests.benchmarks import bench_inference

    return bench_inference.run(parts)


def _state(parts: list[str] | None) -> str:
    from tests.benchmarks import bench_state

    return bench_state.run(parts)


def _offline(parts: list[str] | None) -> str:
    from tests.benchmarks import bench_offline

    return bench_offline.run(parts)


def _train(parts: list[str] | None) -> str:
    from tests.benchmarks import bench_train

    return bench_train.run(parts)


def _backfill_engines(parts: list[str] | None) -> str:
    from tests.benchmarks import bench_backfill_engines

    return bench_backfill_engines.run(parts)


def _cli(parts: list[str] | None) -> str:
    from tests.benchmarks import bench_cli

    return bench_cli.run(parts)


def _locust(parts: list[str] | None) -> str:
    from tests.benchmarks import bench_locust

    return bench_locust.run(parts)


MODULES: dict[str, Callable[[list[str] | None], str]] = {
    "serde": _serde, "features": _features, "models": _models, "reader": _reader, "inference": _inference,
    "locust": _locust, "state": _state, "cli": _cli,
    "offline": _offline, "train": _train, "backfill_engines": _backfill_engines,
}  # fmt: skip


def main(argv: list[str]) -> None:
    selected: list[tuple[str, list[str] | None]] = []
    for arg in argv or list(MODULES):
        name, _, rest = arg.partition(":")
        if name not in MODULES:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(MODULES)}")
        selected.append((name, [p for p in rest.split(",") if p] or None))
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    print(f"## Run of {datetime.date.today().isoformat()}\n")
    print(f"`make bench` on {platform.node()}: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}\n")
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    for name, parts in selected:
        print(MODULES[name](parts), flush=True)
    print(
        f"Wall time of this run: {time.monotonic() - started:.0f} s. Load average (1 min) before it: "
        f"{load_before:.2f}, after: {os.getloadavg()[0]:.2f} (anything else running on these cores shows here).\n",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
