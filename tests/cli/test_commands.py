"""The command tree: grouped by noun, the previous release's spellings still working but hidden."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import streamscore.retrain
from streamscore.cli import app

NOUNS = {"stack", "topics", "config", "features", "models", "inference", "retrain"}


def test_groups_are_nouns_and_hold_their_verbs() -> None:
    root = typer.main.get_command(app)
    commands = root.commands  # type: ignore[attr-defined]
    assert {n for n, c in commands.items() if hasattr(c, "commands")} == NOUNS
    assert {"backfill", "apply", "plan", "run", "get"} <= commands["features"].commands.keys()
    assert {"train", "list", "show", "promote", "rollback", "decisions"} <= commands["models"].commands.keys()
    assert set(commands["retrain"].commands) == {"run"}


@pytest.mark.parametrize(("old", "new"), [("backfill", "features backfill"), ("train", "models train"),
                                          ("retrain-on-drift", "retrain run")])  # fmt: skip
def test_old_spellings_are_hidden_aliases(old: str, new: str) -> None:
    root = typer.main.get_command(app)
    alias = root.commands[old]  # type: ignore[attr-defined]
    assert alias.hidden
    target = root
    for word in new.split():
        target = target.commands[word]  # type: ignore[attr-defined]
    assert [p.name for p in alias.params] == [p.name for p in target.params]
    listed = CliRunner().invoke(app, ["--help"]).stdout
    assert f" {old} " not in listed


def test_an_alias_runs_the_new_command_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(streamscore.retrain, "run_retrainer", seen.append)
    result = CliRunner().invoke(app, ["retrain-on-drift", "--min-reports", "5"])
    assert result.exit_code == 0, result.output
    assert seen[0].retrain.min_reports == 5
    assert "`streamscore retrain-on-drift` is now `streamscore retrain run`" in result.stderr
