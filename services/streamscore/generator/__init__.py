"""Synthetic card transactions that behave like real ones, reproducibly.

Every later stage (windowed features, backfills, training, drift detection) needs traffic with the
properties that break naive code: per-user habits and heavy-tailed amounts, popular merchants, a daily
cycle, labelled fraud bursts, a distribution shift at a known moment, and events that arrive out of
order or late. One :class:`GeneratorConfig` names such a stream exactly: the same config gives the same
records in the same emission order, whether read as dicts (:func:`generate`), Arrow tables
(:func:`generate_tables`), a DataFrame (:func:`generate_frame`), a Parquet file (:func:`write_parquet`)
or Kafka messages (:func:`produce_to_kafka`).

>>> config = GeneratorConfig(events=2000, seed=42)
>>> frame = generate_frame(config)
>>> len(frame), frame["event_id"].is_unique, str(frame["event_time"].dtype)
(2000, True, 'datetime64[ms, UTC]')
>>> first = next(generate(config))[0]
>>> first["event_id"] == frame["event_id"][0], first["channel"] in ("POS", "ECOM", "ATM", "MOTO")
(True, True)
"""

from streamscore.generator.config import GeneratorConfig
from streamscore.generator.sinks import produce_to_kafka, write_parquet
from streamscore.generator.stream import ARROW_SCHEMA, generate, generate_frame, generate_tables
from streamscore.generator.timing import last_event_time, start_ending_by

__all__ = [
    "ARROW_SCHEMA",
    "GeneratorConfig",
    "generate",
    "generate_frame",
    "generate_tables",
    "last_event_time",
    "produce_to_kafka",
    "start_ending_by",
    "write_parquet",
]
