"""The command tree: grouped by noun, the previous release's spellings still working but hidden."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import streamscore.retrain
from streamscore.cli import app, main
from streamscore.generator import GeneratorConfig, write_parquet

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


def _main(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["streamscore", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    code = exited.value.code
    return int(code) if isinstance(code, int) else 1, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "code", "start"),
    [
        (["generate", "--to", "x.csv"], 2, "usage error: Invalid value: --to must be 'kafka'"),
        (["nosuch"], 2, "usage error: No such command 'nosuch'"),
        (["models", "show"], 2, "usage error: Missing argument 'version'"),
        (["features", "backfill", "--events", "/nope.parquet", "--start", "2026-01-01", "--end", "2026-01-02"], 2,
         "usage error: Invalid value for '--events': file '/nope.parquet' does not exist"),
        (["report", "--since", "90"], 2, "usage error: Invalid value for '--since': '90' has no unit"),
        (["features", "run", "--engine", "flink"], 2, "usage error: Invalid value: --engine must be faust or kafka"),
        (["features", "backfill", "--events", __file__, "--start", "yesterday", "--end", "now"], 2,
         "usage error: Invalid value for '--start': cannot read 'yesterday' as a time"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_line_and_a_failing_exit(
    argv: list[str], code: int, start: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    got, err = _main(argv, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith(start), err


def test_an_unexpected_failure_is_one_line_unless_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(settings: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(streamscore.retrain, "run_retrainer", boom)
    code, err = _main(["retrain", "run"], monkeypatch, capsys)
    assert code == 1
    assert err.strip() == "error: RuntimeError: boom (run again with --debug for the traceback)"
    monkeypatch.setattr(sys, "argv", ["streamscore", "--debug", "retrain", "run"])
    with pytest.raises(RuntimeError, match="boom"):
        main()


def test_a_backfill_that_matches_nothing_keeps_the_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to rewrite the offline tables empty, exit 0: the training data gone."""
    monkeypatch.setenv("STREAMSCORE_DATA_DIR", str(tmp_path / "data"))
    assert CliRunner().invoke(app, ["features", "apply"]).exit_code == 0
    events = tmp_path / "h.parquet"
    write_parquet(GeneratorConfig(events=200, start=datetime(2026, 12, 1, tzinfo=UTC)), events)
    table = tmp_path / "data" / "offline" / "user_transactions.parquet"
    table.parent.mkdir(parents=True)
    table.write_bytes(b"the demo's table")
    argv = ["features", "backfill", "--events", str(events), "--start", "2026-11-01", "--end", "2026-11-03"]
    code, err = _main(argv, monkeypatch, capsys)
    assert code == 1
    assert "no event of" in err
    assert "pass --force" in err
    assert table.read_bytes() == b"the demo's table"


def test_topics_list_shows_every_topic_whole_at_80_columns() -> None:
    """It failed on the compacted state topics (no retention) and cut `transactions-by-mer…`."""
    from streamscore.kafka import topic_specs
    from streamscore.settings import Settings

    result = CliRunner().invoke(app, ["topics", "list"])  # not a terminal: rich's 80 columns
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert max(map(len, text.splitlines())) <= 80
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.count("│") > 2)
    for spec in topic_specs(Settings()):
        assert spec.name in cells  # folded, never cut
    assert "compacted" in text
    assert "…" not in text


@pytest.mark.parametrize(
    ("argv", "keeps"),
    [
        (["features", "apply"], True),
        (["--debug", "features", "apply"], True),
        (["feast", "--", "apply"], True),
        (["features", "run", "--engine", "kafka"], False),
        (["features", "get", "--user", "u-1"], False),
        (["inference", "run"], False),
    ],
)
def test_feasts_type_checks_are_kept_only_where_user_definitions_load(
    argv: list[str], keeps: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commands that import the definitions file keep feast's typeguard checks; the others start 3 s faster."""
    from types import SimpleNamespace

    import streamscore.cli as cli

    monkeypatch.setattr(sys, "argv", ["streamscore", *argv])
    ctx = SimpleNamespace(invoked_subcommand=next(a for a in argv if not a.startswith("-")))
    assert cli._loads_user_definitions(ctx) is keeps  # type: ignore[arg-type]
