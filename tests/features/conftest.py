"""Every test that runs the feature processor runs it on both engines (``features.engine``)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["faust", "kafka"])
def engine(request: pytest.FixtureRequest) -> str:
    engine: str = request.param
    return engine
