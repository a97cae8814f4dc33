"""The README and the docs pages stay true: the configuration table, the commands, the make targets and
the links they name all exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from streamscore.cli import app
from streamscore.settings import settings_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
page = pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])

# [text](target) and ![alt](target); the text may wrap onto the next line.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)


def test_configuration_table_matches_the_settings() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    start, end = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"
    table = text[text.index(start) + len(start) : text.index(end)]
    assert table == settings_markdown(), (
        "docs/configuration.md table is stale: paste `streamscore config table` into docs/configuration.md"
    )


@page
def test_every_streamscore_command_exists(path: Path) -> None:
    group = typer.main.get_command(app)
    commands = re.findall(r"streamscore ((?:[a-z][a-z-]* ?)+)", path.read_text())
    assert commands, f"{path.name} names no streamscore command"
    for words in commands:
        node = group
        for word in words.split():
            sub = getattr(node, "commands", {}).get(word)
            if sub is None:
                break
            node = sub
        assert node is not group, f"`streamscore {words}` ({path.name}) is not a command"
        assert not hasattr(node, "commands"), f"`streamscore {words}` ({path.name}) names a group, not a command"


@page
def test_every_make_target_exists(path: Path) -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, flags=re.MULTILINE))
    for target in set(re.findall(r"\bmake ([a-z-]+)", path.read_text())):
        assert target in targets, f"make {target} is in {path.name} but not in the Makefile"


def test_the_readme_shows_the_two_commands() -> None:
    assert {"demo", "test"} <= set(re.findall(r"\bmake ([a-z-]+)", README.read_text()))


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text()), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@page
def test_every_relative_link_points_to_a_file(path: Path) -> None:
    text = FENCE.sub("", path.read_text())
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z+.-]*:", t)]
    for target in targets:
        name, _, anchor = target.partition("#")
        file = (path.parent / name).resolve() if name else path
        assert file.exists(), f"{path.relative_to(ROOT)} links to {target}, which does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{path.relative_to(ROOT)} links to {target}: no such heading"
