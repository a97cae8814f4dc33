"""`streamscore generate`: synthetic card transactions to Kafka or Parquet."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from streamscore.cli.output import console, instant, progress_bar, settings_of

__all__ = ["generate"]


def generate(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", help="'kafka' or a path ending in .parquet")],
    events: Annotated[int, typer.Option(min=1, help="How many events.")] = 10_000,
    rate: Annotated[float, typer.Option(min=0.001, help="Mean events per second of event time.")] = 100.0,
    users: Annotated[int, typer.Option(min=1)] = 1000,
    merchants: Annotated[int, typer.Option(min=1)] = 200,
    seed: Annotated[int, typer.Option()] = 0,
    fraud_rate: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.01,
    start: Annotated[
        datetime | None,
        instant(
            "First event time. Default: the start that puts the last event just before now (the span is measured"
            " on the stream, daily cycle included); with --realtime, now."
        ),
    ] = None,
    drift_at: Annotated[datetime | None, instant("Distributions shift from this event time.")] = None,
    realtime: Annotated[
        bool,
        typer.Option(
            help="With --to kafka: send each event when the wall clock reaches its event time (never ahead of it;"
            " the rate follows the daily cycle around --rate)."
        ),
    ] = False,
    requests: Annotated[
        bool, typer.Option(help="With --to kafka: a score request before each transaction (id = event id).")
    ] = False,
) -> None:
    """Realistic card transactions, deterministic for a seed, to Kafka or a Parquet file."""
    from streamscore.generator import GeneratorConfig, produce_to_kafka, start_ending_by, write_parquet

    now = datetime.now(tz=UTC).replace(microsecond=0)
    try:
        config = GeneratorConfig(
            events=events, rate=rate, users=users, merchants=merchants, seed=seed, fraud_rate=fraud_rate,
            start=start or now, drift_at=drift_at,
        )  # fmt: skip
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if to != "kafka" and not to.endswith(".parquet"):
        raise typer.BadParameter("--to must be 'kafka' or a path ending in .parquet")
    if requests and to != "kafka":
        raise typer.BadParameter("--requests needs --to kafka")
    if start is None and not realtime:
        config = dataclasses.replace(config, start=start_ending_by(config, now))
    with progress_bar() as bar:
        task = bar.add_task(f"generating → {to}", total=events, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)

        if to == "kafka":
            settings = settings_of(ctx)
            count = produce_to_kafka(config, settings, realtime=realtime, requests=requests, progress=advance)
        else:
            count = write_parquet(config, Path(to), progress=advance)
    console.print(f"{count:,} events ({config.start.isoformat()} onwards) → {to}")
