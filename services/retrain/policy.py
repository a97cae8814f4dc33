"""When drift is persistent enough to retrain: a pure, replayable decision over the drift reports.

A single drifted window is often noise (a burst, a quiet night, a worker that just started). The policy
waits for ``min_reports`` drifted reports in a row about the model that serves now, spanning at least
``min_duration_s``, and then holds off for ``cooldown_s`` after each retrain so that one shift does not
trigger a retrain per report while the first is still training. Reports about another model version are
skipped: they describe a model that no longer serves (or not yet), and a promotion starts a new streak.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.settings import RetrainSettings

__all__ = ["DriftPolicy", "Trigger", "drifted_features"]


def drifted_features(report: dict[str, Any]) -> list[str]:
    """The inputs (and the score) any statistic of ``report`` flagged, each once, in report order."""
    return list(dict.fromkeys(f["feature"] for f in report["features"] if f["drifted"]))


@dataclass(frozen=True)
class Trigger:
    """Why a retrain starts: the streak of reports that met the policy."""

    model_version: str
    reports: int
    first_window_start: datetime
    last_window_end: datetime
    features: tuple[str, ...]

    def describe(self) -> str:
        span = (self.last_window_end - self.first_window_start).total_seconds()
        return (
            f"{self.reports} drifted reports in a row about v{self.model_version} over {span:.0f}s; "
            f"drifted: {', '.join(self.features)}"
        )


@dataclass
class DriftPolicy:
    settings: RetrainSettings
    _streak: list[dict[str, Any]] = field(default_factory=list)
    _quiet_until: float = float("-inf")

    @property
    def streak(self) -> int:
        return len(self._streak)

    def cooldown(self, now: float) -> None:
        """Start the quiet period (``now`` in monotonic seconds), after a retrain ends however it ended."""
        self._quiet_until = now + self.settings.cooldown_s
        self._streak.clear()

    def observe(self, report: dict[str, Any], champion: str | None, now: float) -> Trigger | None:
        """Take one report; a Trigger when it completes a streak the policy retrains on."""
        if champion is None or report["model_version"] != champion:
            return None
        if len(drifted_features(report)) < self.settings.min_drifted_features:
            self._streak.clear()
            return None
        self._streak.append(report)
        if now < self._quiet_until or len(self._streak) < self.settings.min_reports:
            return None
        first, last = self._streak[0], self._streak[-1]
        if (last["window_end"] - first["window_start"]).total_seconds() < self.settings.min_duration_s:
            return None
        features = tuple(dict.fromkeys(f for r in self._streak for f in drifted_features(r)))
        trigger = Trigger(champion, len(self._streak), first["window_start"], last["window_end"], features)
        self._streak.clear()
        return trigger
