"""Start the feature processor in this process (`streamscore features run`), on the configured engine."""

from __future__ import annotations

import logging
import signal

from streamscore.exporter import serve_metrics
from streamscore.features import load_plans, rules_for
from streamscore.features.plan import ViewPlan
from streamscore.features.processor import FeatureProcessor
from streamscore.features.rules import EventRules
from streamscore.heap import freeze_startup_heap
from streamscore.kafka import ensure_topics
from streamscore.settings import Settings

__all__ = ["run_processor"]

log = logging.getLogger(__name__)


def run_processor(settings: Settings) -> None:
    """Blocks until SIGINT/SIGTERM; the stop takes a last checkpoint and commits what it holds."""
    ensure_topics(settings)
    plans = load_plans(settings)
    run = _run_kafka if settings.features.engine == "kafka" else _run_faust
    run(settings, plans, rules_for(settings, plans))


def _started(settings: Settings, plans: list[ViewPlan], processor: FeatureProcessor) -> None:
    serve_metrics(settings, "features")
    frozen = freeze_startup_heap()
    log.info(
        "feature processor (%s engine): views %s, group %s, state in %s; %d start-up objects frozen",
        settings.features.engine, ", ".join(p.name for p in plans), settings.features.group_id,
        ", ".join(r.state_log.topic for r in processor.recovery.values()), frozen,
    )  # fmt: skip


def _run_faust(settings: Settings, plans: list[ViewPlan], rules: EventRules) -> None:
    import faust

    from streamscore.features.app import build_app

    app, processor = build_app(settings, plans, rules)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), redirect_stdouts=False, override_logging=False)
    _started(settings, plans, processor)
    try:
        worker.execute_from_commandline()
    finally:
        processor.producer.flush()


def _run_kafka(settings: Settings, plans: list[ViewPlan], rules: EventRules) -> None:
    from streamscore.features.kafka_engine import KafkaEngine

    processor = FeatureProcessor(settings, plans, rules)
    engine = KafkaEngine(settings, processor)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: engine.stop())
    _started(settings, plans, processor)
    try:
        engine.run()
    finally:
        processor.producer.flush()
