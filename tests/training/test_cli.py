"""`streamscore train` and `streamscore models ...` as a user runs them, settings from STREAMSCORE_* variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from streamscore import cli
from streamscore.models import CHALLENGER, CHAMPION
from tests.training.helpers import History, data_dir_with

pytestmark = pytest.mark.integration

ISO = "%Y-%m-%dT%H:%M:%S"  # typer's datetime format; the CLI reads naive times as UTC


@dataclass(frozen=True)
class Trained:
    data_dir: Path
    first: dict[str, Any]
    second: dict[str, Any]


def env(data_dir: Path) -> dict[str, str]:
    return {"STREAMSCORE_DATA_DIR": str(data_dir), "STREAMSCORE_METRICS_PORT": "0"}


def invoke(data_dir: Path, *args: str) -> Any:
    """Run the CLI in-process with the settings coming from the environment; stdout must be JSON."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env(data_dir).items():
            mp.setenv(name, value)
        result = CliRunner().invoke(cli.app, list(args))
    assert result.exit_code == 0, f"{args}: {result.exception!r}\n{result.stderr}"
    return json.loads(result.stdout)


def train_args(history: History, seed: int = 0) -> list[str]:
    return [
        "models", "train", "--events", str(history.events), "--start", history.start.strftime(ISO),
        "--end", history.end.strftime(ISO), "--seed", str(seed), "--json",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(history: History, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Two `train --json` runs, same seed: v1 promoted, v2 challenger."""
    data_dir = tmp_path_factory.mktemp("cli")
    data_dir_with(history, data_dir)
    return Trained(data_dir, invoke(data_dir, *train_args(history)), invoke(data_dir, *train_args(history)))


def champion_of(data_dir: Path) -> int:
    (champion,) = [v["version"] for v in invoke(data_dir, "models", "list", "--json") if CHAMPION in v["aliases"]]
    return int(champion)


def test_train_json_reports_version_promotion_and_hash(trained: Trained, history: History) -> None:
    first, second = trained.first, trained.second
    assert (first["version"], first["promoted"]) == (1, True)
    assert (second["version"], second["promoted"]) == (2, False)
    assert len(first["sha256"]) == 64
    assert second["sha256"] == first["sha256"]
    assert first["kind"] == "mlp"
    assert first["gate"]["passed"]
    assert not second["gate"]["passed"]
    assert first["metrics"]["roc_auc"] > 0.5
    assert set(first["rows"]) == {"train", "validation", "test"}
    assert first["windows"]["train"][0] == history.start.isoformat()
    assert any("does not beat champion" in r for r in second["gate"]["reasons"])
    assert set(first["seconds"]) == {"dataset", "fit", "export", "gate", "register"}


def test_models_list_shows_versions_with_aliases_hashes_and_metrics(trained: Trained) -> None:
    versions = invoke(trained.data_dir, "models", "list", "--json")
    assert [v["version"] for v in versions] == [2, 1]  # newest first
    by_version = {v["version"]: v for v in versions}
    assert by_version[1]["aliases"] == [CHAMPION]
    assert by_version[2]["aliases"] == [CHALLENGER]
    for v in versions:
        assert v["sha256"] == trained.first["sha256"]
        assert v["artifact_uri"].startswith("file://")
        assert v["artifact_uri"].endswith("/model")
        assert str(trained.data_dir) in v["artifact_uri"]
        assert v["metrics"]["test_roc_auc"] == pytest.approx(trained.first["metrics"]["roc_auc"])
        assert v["kind"] == "mlp"
        assert v["feature_service"] == "fraud_model_v1"


def test_models_list_says_where_each_metric_was_measured_and_puts_the_champion_first(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v1 once showed 0.9825 above champion v2's 0.9527 with nothing saying they were different windows."""
    versions = invoke(trained.data_dir, "models", "list", "--json")
    for v in versions:
        assert [v["test_start"], v["test_end"]] == list(trained.first["windows"]["test"])
    for name, value in env(trained.data_dir).items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli.app, ["models", "list"])  # not a terminal: rich's 80 columns
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    versions_shown = [line.removeprefix("version ") for line in lines if line.startswith("version ")]
    assert versions_shown == ["1", "2"]  # the champion first, though v2 is newer; one record each
    assert lines[lines.index("version 1") + 1] == f"aliases {CHAMPION}"  # never cut to "challen…"
    start, end = (t[:16].replace("T", " ") for t in trained.first["windows"]["test"])
    assert f"test window (UTC) {start} → {end}" in lines
    assert "compare versions only on the same window" in " ".join(lines)


def test_promote_moves_the_champion_and_rollback_moves_it_back(trained: Trained) -> None:
    assert champion_of(trained.data_dir) == 1
    promoted = invoke(trained.data_dir, "models", "promote", "2", "--json")
    assert promoted["version"] == 2
    assert CHAMPION in promoted["aliases"]
    assert champion_of(trained.data_dir) == 2
    rolled = invoke(trained.data_dir, "models", "rollback", "--json")
    assert rolled["version"] == 1
    assert CHAMPION in rolled["aliases"]
    assert champion_of(trained.data_dir) == 1


def test_models_show_has_the_card_and_the_gate_report(trained: Trained) -> None:
    shown = invoke(trained.data_dir, "models", "show", CHAMPION, "--json")
    assert shown["version"] == 1
    assert shown["sha256"] == trained.first["sha256"]
    assert shown["card"]["features"] == trained.first["features"]
    assert shown["card"]["threshold"] == trained.first["threshold"]
    assert shown["gate"] == trained.first["gate"]
    challenger = invoke(trained.data_dir, "models", "show", CHALLENGER, "--json")
    assert challenger["version"] == 2
    assert challenger["gate"]["passed"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["models", "train", "--start", "2026-01-02T00:00:00", "--end", "2026-01-01T00:00:00"],
            "error: empty window: end",
        ),
        (["models", "show", "7", "--json"], "error: model 'fraud-detector' has no version 7"),
        (["models", "promote", "7"], "error: model 'fraud-detector' has no version 7"),
    ],
    ids=["end-before-start", "show-unknown", "promote-unknown"],
)
def test_a_bad_request_is_one_line_on_stderr_and_a_failing_exit(
    trained: Trained,
    history: History,
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through `main`, the console script's entry point, which turns our errors into one line."""
    for name, value in env(trained.data_dir).items():
        monkeypatch.setenv(name, value)
    if args[:2] == ["models", "train"]:
        args = [*args, "--events", str(history.events)]
    monkeypatch.setattr(sys, "argv", ["streamscore", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(message), err
    assert "Traceback" not in err
    assert out.strip() == ""
    assert champion_of(trained.data_dir) == 1  # nothing changed


def test_the_console_script_fails_with_one_line(trained: Trained, history: History, tmp_path: Path) -> None:
    """The installed `streamscore` in a fresh process: settings from the environment only, no traceback."""
    script = Path(sys.executable).with_name("streamscore")
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("STREAMSCORE_")} | env(trained.data_dir)
    args = ["models", "train", "--events", str(history.events), "--start", "2026-01-02T00:00:00",
            "--end", "2026-01-01T00:00:00"]  # fmt: skip
    done = subprocess.run([str(script), *args, "--json"], env=environ, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["error: empty window: end 2026-01-01T00:00:00+00:00 is not after start 2026-01-02T00:00:00+00:00"]
    assert done.stdout.strip() == ""
    listed = subprocess.run(
        [str(script), "models", "list", "--json"], env=environ, cwd=tmp_path, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    assert [v["version"] for v in json.loads(listed.stdout)] == [2, 1]


@pytest.fixture(scope="module", autouse=True)
def _no_leaked_settings() -> Iterator[None]:
    yield
    assert not any(name.startswith("STREAMSCORE_") for name in os.environ)
