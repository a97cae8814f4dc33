"""How long a command takes to answer, as a user at a shell sees it: whole processes, from exec to exit,
against ``python -c pass`` (the interpreter's own start) in the same rounds.

Against a Kafka + Redis of its own with the Feast registry applied and one user's features written, so
``features get`` does its real work: load the settings, read the registry, one ``get_online_features``
through Feast's SDK. The commands take turns, round by round, so drift in the machine's load falls on all
of them alike. ``python -m tests.benchmarks cli``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.benchmarks.features_common import bench_stack, isolated, say

ROUNDS = 9
WARMUP = 2
CLI = str(Path(sys.executable).with_name("streamscore"))
USER = "u-bench-1"
# (label, argv, target in seconds or None)
COMMANDS: list[tuple[str, list[str], float | None]] = [
    ("`python -c pass` (baseline)", [sys.executable, "-c", "pass"], None),
    # A plain `import feast`, typeguard instrumenting its classes as it loads; the CLI skips that where no
    # definitions file is loaded (cli/__init__.py), so `features get` can start faster than this.
    ("`python -c 'import feast'` (typeguard on)", [sys.executable, "-c", "import feast"], None),
    ("`streamscore --help`", [CLI, "--help"], 1.0),
    ("`streamscore config show`", [CLI, "config", "show"], 1.0),
    (f"`streamscore features get --user {USER}`", [CLI, "features", "get", "--user", USER], 2.0),
]


def _time(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return took


def run(parts: list[str] | None = None) -> str:
    from streamscore.settings import child_env
    from streamscore.store import OnlineWriter, apply_definitions

    with bench_stack() as (base, tmp):
        settings = isolated(base, tmp, "cli", redis_db=2)
        apply_definitions(settings)
        with OnlineWriter(settings) as writer:
            names = writer.views["user_transactions"]
            values = {n: np.array([3 if "count" in n else 42.5]) for n in names}
            writer.write("user_transactions", [USER], values, np.array([int(time.time() * 1000)]))
        env = child_env(settings)
        samples: dict[str, list[float]] = {label: [] for label, _, _ in COMMANDS}
        for round_ in range(WARMUP + ROUNDS):
            say(f"cli: round {round_ + 1}/{WARMUP + ROUNDS}")
            for label, argv, _ in COMMANDS:
                took = _time(argv, env, tmp)
                if round_ >= WARMUP:
                    samples[label].append(took)
    base_s = statistics.median(samples[COMMANDS[0][0]])
    lines = [
        "### Command start-up (issue 17)\n",
        f"`python -m tests.benchmarks cli`: each command as a whole process (exec to exit, `subprocess.run` around"
        f" it) in {ROUNDS} rounds after {WARMUP} warm-up rounds, the commands in turn; `features get` reads one"
        " user through Feast's SDK from the benchmark's own Redis.\n",
        "| command | median | min | max | median - baseline | target | met? |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, _, target in COMMANDS:
        s = samples[label]
        median = statistics.median(s)
        met = "" if target is None else ("yes" if median < target else "no")
        lines.append(
            f"| {label} | {median:.2f} s | {min(s):.2f} s | {max(s):.2f} s | {median - base_s:+.2f} s |"
            f" {'' if target is None else f'< {target:.0f} s'} | {met} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
