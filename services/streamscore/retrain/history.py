"""What continuous training decided and when, read back from MLflow for reports and the CLI.

Each retrain is one MLflow run in the model's experiment, tagged ``streamscore.kind=retrain``: it starts when
drift triggers it and its tags say how it ended (``promoted``, ``rejected`` by the gate, or ``failed``), which
version it trained and why. MLflow is the record because it already holds the candidates and their gate
reports; the run links the trigger to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from streamscore.models.tracking import Tracking, moment
from streamscore.settings import Settings

__all__ = ["KIND_TAG", "Decision", "Outcome", "decisions"]

KIND_TAG = {"streamscore.kind": "retrain"}
Outcome = Literal["triggered", "promoted", "rejected", "failed"]


@dataclass(frozen=True)
class Decision:
    """One step of a retrain: its trigger (``triggered``) or its end (the other outcomes)."""

    time: datetime
    kind: Outcome
    version: int | None
    detail: str


def decisions(settings: Settings, start: datetime | None = None, end: datetime | None = None) -> list[Decision]:
    """Every trigger and outcome between ``start`` and ``end`` (UTC), oldest first."""
    out: list[Decision] = []
    for run in Tracking(settings).runs(KIND_TAG):
        tags = run.data.tags
        out.append(Decision(moment(run.info.start_time or 0), "triggered", None, tags.get("streamscore.trigger", "")))
        outcome = tags.get("streamscore.outcome")
        if outcome in ("promoted", "rejected", "failed"):
            version = tags.get("streamscore.version")
            ended = moment(run.info.end_time or run.info.start_time or 0)
            out.append(Decision(ended, outcome, int(version) if version else None, tags.get("streamscore.detail", "")))
    return sorted(
        (d for d in out if (start is None or d.time >= start) and (end is None or d.time <= end)),
        key=lambda d: d.time,
    )
