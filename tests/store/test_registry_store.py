"""Feast's own CLI on feature_repo/: one clear line when FEAST_* is unset, and `streamscore feast env` fixes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streamscore.resources import feature_repo_dir

FEAST = [sys.executable, "-m", "feast.cli.cli", "-c", str(feature_repo_dir())]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("STREAMSCORE_", "FEAST_"))}
    env["STREAMSCORE_DATA_DIR"] = str(tmp_path / "data")
    return env


def test_unset_variables_are_one_clear_line_and_no_stray_file(tmp_path: Path) -> None:
    before = sorted(p.name for p in feature_repo_dir().iterdir())
    done = subprocess.run([*FEAST, "feature-views", "list"], env=_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert lines[-1].startswith("FEAST_REGISTRY_PATH and FEAST_REDIS_CONNECTION not set"), done.stderr
    assert "streamscore feast env" in lines[-1]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in feature_repo_dir().iterdir()) == before  # no file named ${FEAST_REGISTRY_PATH}


def test_feast_env_exports_what_feasts_own_cli_needs(tmp_path: Path) -> None:
    env = _env(tmp_path)
    streamscore = [sys.executable, "-m", "streamscore"]
    subprocess.run([*streamscore, "features", "apply"], env=env, cwd=tmp_path, check=True, capture_output=True)
    exports = subprocess.run([*streamscore, "feast", "env"], env=env, cwd=tmp_path, check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
    script = f"{exports}\nexec {' '.join(FEAST)} feature-services list"
    done = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "fraud_model_v1" in done.stdout
    assert "registry.db" in exports
