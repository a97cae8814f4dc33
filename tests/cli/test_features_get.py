"""`streamscore features get` against the real Redis through Feast: known and unknown ids, stable layout."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from streamscore.cli import app
from streamscore.features import load_plans
from streamscore.settings import Settings, settings_env
from streamscore.store import OnlineWriter, apply_definitions

pytestmark = pytest.mark.integration


@pytest.fixture
def stored(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    s = settings.model_copy(
        update={
            "data_dir": tmp_path,
            "redis": settings.redis.model_copy(update={"url": settings.redis.url.rsplit("/", 1)[0] + "/11"}),
        }
    )
    apply_definitions(s)
    now_ms = int(time.time() * 1000)
    with OnlineWriter(s) as writer:
        for plan in load_plans(s):
            ids = ["u-known"] if plan.entity_key == "user_id" else ["m-known"]
            values = {name: np.full(1, 3.0) for name in plan.feature_names}
            writer.write(plan.name, ids, values, np.full(1, now_ms, dtype=np.int64))
    for name, value in settings_env(s).items():
        monkeypatch.setenv(name, value)
    return s


def _get(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["features", "get", *args])
    return result.exit_code, result.stdout, result.stderr


def test_known_and_unknown_ids_each_in_their_place(stored: Settings) -> None:
    code, out, _ = _get("--user", "u-known", "--user", "u-9999999", "--merchant", "m-known", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["unknown"] == ["u-9999999"]
    assert set(data["user_id"]) == {"u-known"}
    assert set(data["merchant_id"]) == {"m-known"}
    users = data["user_id"]["u-known"]
    assert list(users) == sorted(users)  # stable order
    assert all(name.startswith("user_transactions__") for name in users)
    assert all(name.startswith("merchant_transactions__") for name in data["merchant_id"]["m-known"])
    assert users["user_transactions__user_amount_count_1h"] == 3
    assert users["user_transactions__user_amount_mean_1h"] == 3.0


def test_only_unknown_ids_fail(stored: Settings) -> None:
    code, out, _ = _get("--user", "u-9999999")
    assert code == 1
    assert "u-9999999" in out


def test_the_table_has_a_column_per_entity(stored: Settings) -> None:
    code, out, _ = _get("--user", "u-known", "--merchant", "m-known")
    assert code == 0, out
    user_table, merchant_table = out.split("merchant_id")
    assert "u-known" in user_table
    assert "m-known" not in user_table  # merchant values never sit under a user's heading
    assert "m-known" in merchant_table
