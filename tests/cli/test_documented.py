"""Every ``streamscore`` line in the README's and the docs' code blocks, as a newcomer would type it: each
parses (its options exist and its values are valid), the ``generate --to FILE`` lines really run, and a
documented time range covers events of the file the docs' own ``generate`` line makes (the docs once showed
fixed November dates that matched nothing a month later, and the backfill rewrote the tables empty)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from streamscore.cli import app
from streamscore.timespec import parse_instant

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)
PREFIX = re.compile(r"^(?:\.venv/bin/)?streamscore\s")


def documented() -> list[tuple[str, list[str]]]:
    """(page, argv after ``streamscore``) of each command line in a code block."""
    out = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():  # a command continued with a backslash
                if PREFIX.match(line.strip()):
                    words = shlex.split(line, comments=True)
                    out.append((page.name, [w for w in words[1:] if w != "&"]))
    return out


COMMANDS = documented()


def _leaf(argv: list[str]) -> tuple[Any, list[str]]:
    """Parse ``argv`` down to its command, as click would before running it (values converted, files
    checked); returns the command's context and the names of the words that led there."""
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("streamscore", list(argv), resilient_parsing=False)
    path = []
    while hasattr(command, "resolve_command"):  # a group (typer vendors its own click)
        name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert sub is not None, argv
        path.append(name)
        command = sub
        ctx = sub.make_context(name, rest, parent=ctx)
    return ctx, path


def _option(argv: list[str], name: str) -> str | None:
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) >= 30, COMMANDS
    assert any(argv[:2] == ["features", "backfill"] for _, argv in COMMANDS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where the documented ``generate --to FILE`` lines have run."""
    here = tmp_path_factory.mktemp("newcomer")
    made = 0
    for _, argv in COMMANDS:
        target = _option(argv, "--to")
        if argv[0] == "generate" and target is not None and target != "kafka":
            at = argv.index("--to")
            result = CliRunner().invoke(app, [*argv[:at], "--to", str(here / target), *argv[at + 2 :]])
            assert result.exit_code == 0, result.output
            made += 1
    assert made, "no documented generate line writes a file"
    return here


@pytest.mark.parametrize(("page", "argv"), COMMANDS, ids=[f"{p}:{' '.join(a)[:60]}" for p, a in COMMANDS])
def test_a_documented_command_parses(
    page: str, argv: list[str], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    ctx, path = _leaf(argv)
    assert path, argv
    if ctx.params.get("help"):
        return
    events, start, end = _option(argv, "--events"), _option(argv, "--start"), _option(argv, "--end")
    if events and start and end:
        times = pq.read_table(workdir / events, columns=["event_time"]).column("event_time").to_pylist()
        lo, hi = parse_instant(start), parse_instant(end)
        inside = sum(lo <= t <= hi for t in times)
        assert inside > len(times) // 4, f"{page}: `{' '.join(argv)}` covers {inside} of {len(times)} events"
