"""MLflow plumbing: importing streamscore configures nothing; creating the first client quiets MLflow once."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from streamscore.models.tracking import Tracking
from streamscore.settings import Settings

# Run in a fresh interpreter: this one has long imported everything and may have created clients already.
# Third-party imports set warning filters of their own (scipy does), so calls are attributed to their caller.
PROBE = """
import json, logging, os, sys, warnings
from pathlib import Path
import mlflow  # MLflow's own import-time setup (it quiets alembic, sets a telemetry variable) is not ours

calls = []

def spy(owner, name):
    real = getattr(owner, name)

    def recorded(*args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("streamscore"):
            calls.append(f"{caller}: {name}")
        return real(*args, **kwargs)

    setattr(owner, name, recorded)

for owner, name in [(warnings, "filterwarnings"), (warnings, "simplefilter"), (logging.Logger, "setLevel"),
                    (logging, "basicConfig"), (logging, "disable")]:
    spy(owner, name)
quiet = ("alembic", "mlflow.store.db.utils")
levels = lambda: [logging.getLogger(n).level for n in quiet]
before, levels_before = dict(os.environ), levels()
import streamscore.models, streamscore.retrain, streamscore.training
imported = {"env": dict(os.environ) == before, "calls": list(calls), "levels": levels() == levels_before}
from streamscore.models.tracking import Tracking
from streamscore.settings import Settings
Tracking(Settings(data_dir=Path(sys.argv[1]))).client
client = {"env": {k: v for k, v in os.environ.items() if before.get(k) != v}, "levels": levels()}
json.dump({"imported": imported, "client": client}, sys.stdout)
"""


def test_import_changes_no_environment_or_logging_and_the_client_quiets_mlflow(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # Without the variable: a client this test session created has already set it in our environment.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "data")], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    states = json.loads(done.stdout)
    assert states["imported"] == {"env": True, "calls": [], "levels": True}
    assert states["client"] == {
        "env": {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"},
        "levels": [logging.WARNING, logging.WARNING],
    }
    assert not list(cwd.iterdir())  # MLflow's defaults would write ./mlruns or ./mlflow.db


def test_tracking_uri_defaults_under_the_data_dir(tmp_path: Path) -> None:
    tracking = Tracking(Settings(data_dir=tmp_path / "data"))
    assert tracking.uri == f"sqlite:///{tmp_path / 'data' / 'mlflow' / 'mlflow.db'}"
    assert tracking.experiment == "fraud-detector"
    served = Tracking(Settings(data_dir=tmp_path, model={"tracking_uri": "http://mlflow.internal:5000"}))
    assert served.uri == "http://mlflow.internal:5000"
