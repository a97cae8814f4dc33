"""A worker's drift reporting: one :class:`DriftMonitor` per served model version, reports on a timer, metrics.

The worker hands every published batch to :meth:`DriftReporter.observe` and asks :meth:`DriftReporter.due_reports`
for the encoded reports to send with its next batch. A report is kept until :meth:`DriftReporter.sent` confirms
it went out with a batch the broker acknowledged (or a committed transaction), so a failed or retried batch
loses no report. A model swap closes the old version's window at once: a report never mixes two models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import confluent_kafka
from prometheus_client import Counter, Gauge

from streamscore.inference.drift import DriftMonitor, DriftReport
from streamscore.inference.labels import LabelFeed
from streamscore.inference.scorer import ScoredBatch
from streamscore.kafka import ConsumerError
from streamscore.models.runtime import ScoringSession
from streamscore.serde import Serde
from streamscore.settings import Settings

__all__ = ["DriftReporter"]

log = logging.getLogger(__name__)

DRIFT_VALUE = Gauge(
    "streamscore_drift_statistic", "Latest drift statistic per model input (and the score)", ["feature", "statistic"]
)
DRIFT_FLAG = Gauge(
    "streamscore_drift_drifted", "1 if the latest report flagged this input and statistic", ["feature", "statistic"]
)
DRIFT_DETECTIONS = Counter("streamscore_drift_detections", "Changes found by the river detectors", ["stream"])
DRIFT_REPORTS = Counter("streamscore_drift_reports", "Drift reports published", ["drifted"])


class DriftReporter:
    """Windows of the served model's inputs and scores, reported every ``drift.interval_s``."""

    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        topic = settings.topics.drift
        self._serde = Serde("drift_report", registry_url=settings.schema_registry_url, subject=f"{topic}-value")
        self.monitor: DriftMonitor | None = None
        self.labels = LabelFeed(settings) if settings.drift.labels else None
        self._pending: list[DriftReport] = []  # encoded when sent: an encoding failure is retried, not lost
        self._next = time.monotonic() + settings.drift.interval_s
        self._detections: dict[str, int] = {}

    def start(self, session: ScoringSession, profile: Mapping[str, Any]) -> None:
        """Monitor ``session`` from now on; the previous model's open window becomes a report."""
        self.close_window()
        cfg, threshold = self.settings.drift, self.settings.inference.threshold
        try:
            self.monitor = DriftMonitor(
                profile, session.card.features, model_name=session.card.model_name, model_version=session.version,
                worker=self.worker_id, psi_threshold=cfg.psi_threshold,
                wasserstein_threshold=cfg.wasserstein_threshold,
                missing_rate_threshold=cfg.missing_threshold, min_count=cfg.min_count,
                detector=cfg.detector,
                decision_threshold=session.card.threshold if threshold is None else threshold,
                start_ms=int(time.time() * 1000),
            )  # fmt: skip
        except ValueError as exc:  # a version registered without a usable profile still serves
            log.warning("no drift monitoring for %s v%s: %s", session.card.model_name, session.version, exc)
            self.monitor = None
            return
        self._detections = {}
        if self.labels is not None:
            self.labels.forget()  # scores of the previous model must not feed this one's error detector

    def observe(self, request_ids: Iterable[str], batch: ScoredBatch, now_ms: int) -> None:
        """A batch whose predictions were acknowledged (so a retried batch is counted once)."""
        if self.monitor is None:
            return
        self.monitor.observe(batch.inputs, batch.missing, batch.scores, now_ms)
        if self.labels is not None:
            self._labelled(*self.labels.remember(request_ids, batch.scores))

    def poll_labels(self, partitions: Iterable[int]) -> None:
        """Follow the request partitions this worker owns and feed the labels that arrived. Labels only
        monitor: a failure to read them is logged, never allowed to stop scoring."""
        if self.labels is None or self.monitor is None:
            return
        try:
            self.labels.follow(partitions)
            self._labelled(*self.labels.poll())
        except (confluent_kafka.KafkaException, ConsumerError) as exc:
            log.warning("delayed labels not read: %s", exc)

    def _labelled(self, scores: list[float], labels: list[bool]) -> None:
        if scores and self.monitor is not None:
            self.monitor.observe_labels(scores, labels)

    def due(self) -> bool:
        return bool(self._pending) or (self.monitor is not None and time.monotonic() >= self._next)

    def due_reports(self) -> list[tuple[str, bytes]]:
        """(key, value) of every report to publish now: the one whose interval ended, and any not yet sent."""
        if self.monitor is not None and time.monotonic() >= self._next:
            self.close_window()
        return [(f"{r['model_version']}/{self.worker_id}", self._serde.encode(dict(r))) for r in self._pending]

    def sent(self, count: int) -> None:
        """The first ``count`` reports of :meth:`due_reports` are acknowledged."""
        del self._pending[:count]

    def close_window(self) -> None:
        """End the current window now; its report joins the ones :meth:`due_reports` returns."""
        self._next = time.monotonic() + self.settings.drift.interval_s
        if self.monitor is None:
            return
        report = self.monitor.report(int(time.time() * 1000))
        self._record(report)
        self._pending.append(report)

    def _record(self, report: DriftReport) -> None:
        for entry in report["features"]:
            DRIFT_VALUE.labels(entry["feature"], entry["statistic"]).set(entry["value"])
            DRIFT_FLAG.labels(entry["feature"], entry["statistic"]).set(int(entry["drifted"]))
        for detector in report["detectors"]:
            seen = self._detections.get(detector["stream"], 0)
            DRIFT_DETECTIONS.labels(detector["stream"]).inc(detector["n_detections"] - seen)
            self._detections[detector["stream"]] = detector["n_detections"]
        DRIFT_REPORTS.labels(str(report["drifted"]).lower()).inc()
        if report["drifted"]:
            drifted = sorted({f"{e['feature']}:{e['statistic']}" for e in report["features"] if e["drifted"]})
            shown = ", ".join(drifted[:6]) + (f" and {len(drifted) - 6} more" if len(drifted) > 6 else "")
            log.warning("drift in v%s over %d predictions: %s", report["model_version"], report["count"],
                        shown or "a detector fired")  # fmt: skip

    def close(self) -> None:
        if self.labels is not None:
            self.labels.close()
