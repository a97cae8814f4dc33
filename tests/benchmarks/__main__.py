"""Run every benchmark and print Markdown for BENCHMARKS.md (machine and date included)."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

from tests.benchmarks import bench_serde


def main() -> None:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    print(f"## Run of {datetime.date.today().isoformat()}\n")
    print(f"`make bench` on {platform.node()}: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}\n")
    print(bench_serde.run())


if __name__ == "__main__":
    main()
