"""The package runs where it is installed, not only in this checkout: what the container image does.

The wheel is built from this checkout and installed (without dependencies) into a fresh virtualenv outside
it; that virtualenv borrows the project venv's third-party packages through a ``.pth`` line, so the check
takes seconds instead of reinstalling Feast and MLflow, while ``streamscore`` itself comes only from the
wheel (asserted). Every command then runs from an empty directory elsewhere, as the image's ``/data``:
a schema or Feast repository found through the checkout's layout fails here. This failed before the
resources moved into the package (``unknown-schema: no schema file .../lib/python3.11/schemas/...``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(the fresh venv's bin directory, an empty working directory, the environment to run in)."""
    base = tmp_path_factory.mktemp("install")
    wheels, venv, work = base / "wheels", base / "venv", base / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("STREAMSCORE_", "PYTHON"))}
    env.update(STREAMSCORE_DATA_DIR=str(base / "data"), STREAMSCORE_METRICS_PORT="0")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
          str(ROOT)], cwd=work, env=env)  # fmt: skip
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work, env=env)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], work, env))
    purelib = Path(str(purelib).strip())
    (purelib / "project-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    wheel = next(wheels.glob("streamscore-*.whl"))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], work, env)
    return venv / "bin", work, env


def test_the_package_comes_from_the_wheel(installed: tuple[Path, Path, dict[str, str]]) -> None:
    bin_dir, work, env = installed
    where = _run([str(bin_dir / "python"), "-c", "import streamscore; print(streamscore.__file__)"], work, env)
    assert Path(where.strip()).is_relative_to(bin_dir.parent), where
    assert not Path(where.strip()).is_relative_to(ROOT)


def test_resources_and_an_avro_round_trip(installed: tuple[Path, Path, dict[str, str]]) -> None:
    bin_dir, work, env = installed
    script = """
import json
from datetime import UTC, datetime
from streamscore.resources import feature_repo_dir, schemas_dir
from streamscore.serde import SCHEMA_NAMES, Serde
record = {"event_id": "e1", "user_id": "u1", "merchant_id": "m1", "amount": 12.5, "currency": "EUR",
          "country": "DE", "channel": "POS", "event_time": datetime(2026, 1, 1, tzinfo=UTC), "is_fraud": None}
serde = Serde("transaction")
print(json.dumps({"same": serde.decode(serde.encode(record)) == record, "schemas": str(schemas_dir()),
                  "repo": str(feature_repo_dir()), "all": [Serde(n).name for n in SCHEMA_NAMES]}))
"""
    out = json.loads(_run([str(bin_dir / "python"), "-c", script], work, env))
    assert out["same"]
    assert Path(out["schemas"]).is_relative_to(bin_dir.parent)
    assert (Path(out["repo"]) / "definitions.py").is_file()
    assert (Path(out["repo"]) / "feature_store.yaml").is_file()
    assert len(out["all"]) == 5


def test_the_cli_as_the_image_runs_it(installed: tuple[Path, Path, dict[str, str]]) -> None:
    bin_dir, work, env = installed
    cli = str(bin_dir / "streamscore")
    assert "applied" in _run([cli, "features", "apply"], work, env)
    plan = json.loads(_run([cli, "features", "plan", "--json"], work, env))
    assert {v["view"] for v in plan} == {"user_transactions", "merchant_transactions"}
    listed = _run([cli, "feast", "feature-services", "list"], work, env)
    assert "fraud_model_v1" in listed
    views = subprocess.run([cli, "feast", "stream-feature-views", "list"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=300, check=True)  # fmt: skip
    assert {"user_transactions", "merchant_transactions"} <= set(views.stdout.split())
    assert "Warning" not in views.stderr  # Feast's alpha warning about our own views is silenced
    assert "--guarantee" in _run([cli, "inference", "run", "--help"], work, env)
    assert sorted(p.name for p in work.iterdir()) == []  # nothing written where it runs: all under the data dir


def test_grafana_files_travel_with_the_package(installed: tuple[Path, Path, dict[str, str]]) -> None:
    bin_dir, work, env = installed
    script = "import streamscore, pathlib; print(pathlib.Path(streamscore.__file__).parent / 'monitoring' / 'grafana')"
    grafana = Path(_run([str(bin_dir / "python"), "-c", script], work, env).strip())
    source = ROOT / "services" / "streamscore" / "monitoring" / "grafana"
    wanted = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    assert wanted
    assert sorted(p.relative_to(grafana).as_posix() for p in grafana.rglob("*") if p.is_file()) == wanted
