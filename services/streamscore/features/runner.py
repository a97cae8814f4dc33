"""Start the feature processor as a faust worker in this process (`streamscore features run`)."""

from __future__ import annotations

import logging

import faust

from streamscore.exporter import serve_metrics
from streamscore.features import load_plans, rules_for
from streamscore.features.app import build_app
from streamscore.kafka import ensure_topics
from streamscore.settings import Settings

__all__ = ["run_processor"]

log = logging.getLogger(__name__)


def run_processor(settings: Settings) -> None:
    """Blocks until SIGINT/SIGTERM; the stop takes a last checkpoint and commits what it holds (app.py)."""
    ensure_topics(settings)
    plans = load_plans(settings)
    app, processor = build_app(settings, plans, rules_for(settings, plans))
    serve_metrics(settings, "features")
    log.info(
        "feature processor: views %s, group %s, state in %s",
        ", ".join(p.name for p in plans), settings.features.group_id,
        ", ".join(r.state_log.topic for r in processor.recovery.values()),
    )  # fmt: skip
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), redirect_stdouts=False, override_logging=False)
    try:
        worker.execute_from_commandline()
    finally:
        processor.producer.flush()
