"""When drift is persistent enough to retrain: a pure, replayable decision over the drift reports.

A single drifted window is often noise (a burst, a quiet night, a worker that just started). Reports are per
worker, so the policy follows each worker's own sequence: it waits for ``min_reports`` drifted reports in a
row from one worker about the model that serves now, spanning at least ``min_duration_s``. Several workers
flagging the same window are one observation, not a streak, and a quiet report from a worker with little
traffic does not break another worker's streak. After each retrain the policy holds off for ``cooldown_s``,
so one shift does not trigger a retrain per report while the first is still training. Reports about another
model version are skipped: they describe a model that no longer serves (or not yet), and a promotion starts
new streaks. A report whose window does not end after the last one seen from its worker is a copy (a
worker re-sends its reports when a batch is retried after a partial delivery, and the retrainer reads them
again after a failed commit) and is skipped, so it cannot count twice toward a streak.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from streamscore.settings import RetrainSettings

__all__ = ["DriftPolicy", "Trigger", "drifted_features"]


def drifted_features(report: dict[str, Any]) -> list[str]:
    """The inputs (and the score) any statistic of ``report`` flagged, each once, in report order."""
    return list(dict.fromkeys(f["feature"] for f in report["features"] if f["drifted"]))


@dataclass(frozen=True)
class Trigger:
    """Why a retrain starts: the streak of reports that met the policy."""

    model_version: str
    worker: str
    reports: int
    first_window_start: datetime
    last_window_end: datetime
    features: tuple[str, ...]

    def describe(self) -> str:
        span = (self.last_window_end - self.first_window_start).total_seconds()
        return (
            f"{self.reports} drifted reports in a row about v{self.model_version} from worker {self.worker} over "
            f"{span:.0f}s; drifted: {', '.join(self.features)}"
        )


@dataclass
class DriftPolicy:
    settings: RetrainSettings
    _streaks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _quiet_until: float = float("-inf")
    _last_end: dict[str, datetime] = field(default_factory=dict)  # per worker: the newest window seen

    @property
    def streak(self) -> int:
        """The longest open streak (what the metric and `top` show)."""
        return max((len(s) for s in self._streaks.values()), default=0)

    def cooldown(self, now: float) -> None:
        """Start the quiet period (``now`` in monotonic seconds), after a retrain ends however it ended."""
        self._quiet_until = now + self.settings.cooldown_s
        self._streaks.clear()

    def observe(self, report: dict[str, Any], champion: str | None, now: float) -> Trigger | None:
        """Take one report; a Trigger when it completes a streak the policy retrains on."""
        worker = report["worker"]
        seen = self._last_end.get(worker)
        if seen is not None and report["window_end"] <= seen:
            return None
        self._last_end[worker] = report["window_end"]
        if champion is None or report["model_version"] != champion:
            return None
        streak = self._streaks.setdefault(worker, [])
        if len(drifted_features(report)) < self.settings.min_drifted_features:
            streak.clear()
            return None
        streak.append(report)
        if now < self._quiet_until or len(streak) < self.settings.min_reports:
            return None
        first, last = streak[0], streak[-1]
        if (last["window_end"] - first["window_start"]).total_seconds() < self.settings.min_duration_s:
            return None
        features = tuple(dict.fromkeys(f for r in streak for f in drifted_features(r)))
        trigger = Trigger(champion, worker, len(streak), first["window_start"], last["window_end"], features)
        self._streaks.clear()
        return trigger
