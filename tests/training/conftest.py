"""One generated, backfilled history for every training test, made once per session (see ``helpers``)."""

from __future__ import annotations

import pytest

from tests.training.helpers import History, make_history


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return make_history(tmp_path_factory.mktemp("history"))
