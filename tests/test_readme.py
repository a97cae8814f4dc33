"""The README stays true: its configuration table, its commands and its make targets all exist."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from streamscore.cli import app
from streamscore.settings import settings_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_configuration_table_matches_the_settings() -> None:
    start, end = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"
    table = README[README.index(start) + len(start) : README.index(end)]
    assert table == settings_markdown(), "README table is stale: paste `streamscore config table`"


def test_every_streamscore_command_in_the_readme_exists() -> None:
    group = typer.main.get_command(app)
    commands = re.findall(r"streamscore ((?:[a-z][a-z-]* ?)+)", README)
    assert commands
    for words in commands:
        node = group
        for word in words.split():
            sub = getattr(node, "commands", {}).get(word)
            if sub is None:
                break
            node = sub
        assert node is not group, f"`streamscore {words}` is not a command"
        assert not hasattr(node, "commands"), f"`streamscore {words}` names a group, not a command"


def test_every_make_target_in_the_readme_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, flags=re.MULTILINE))
    for target in set(re.findall(r"\bmake ([a-z-]+)", README)):
        assert target in targets, f"make {target} is in the README but not in the Makefile"
    assert {"demo", "test"} <= set(re.findall(r"\bmake ([a-z-]+)", README))
