"""`streamscore demo`: the whole loop on the running stack."""

from __future__ import annotations

from typing import Annotated

import typer

from streamscore.cli.output import console, settings_of

__all__ = ["demo"]


def demo(
    ctx: typer.Context,
    history: Annotated[int, typer.Option(min=1000, help="Historical events to generate.")] = 100_000,
    live: Annotated[int, typer.Option(min=100, help="Live events before the drift.")] = 5_000,
    drifted: Annotated[
        int, typer.Option(min=1000, help="Drifted live events (the retrain learns from them).")
    ] = 60_000,
    after: Annotated[int, typer.Option(min=100, help="Drifted live events after the retrain.")] = 10_000,
) -> None:
    """The whole loop on the running stack: history, backfill, train, serve, drift, retrain, promote, report."""
    from streamscore.demo import run_demo

    run_demo(settings_of(ctx), console=console, history_events=history, live_events=live, drifted_events=drifted,
             after_events=after)  # fmt: skip
