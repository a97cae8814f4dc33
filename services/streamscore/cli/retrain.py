"""`streamscore retrain`: continuous training, from drift reports to a gated, promoted champion."""

from __future__ import annotations

from typing import Annotated

import typer

from streamscore.cli.output import settings_of

__all__ = ["retrain_app", "retrain_run"]

retrain_app = typer.Typer(no_args_is_help=True, help="Continuous training: retrain on persistent drift.")


@retrain_app.command("run")
def retrain_run(
    ctx: typer.Context,
    min_reports: Annotated[int | None, typer.Option(min=1, help="Drifted reports in a row that trigger.")] = None,
    window_h: Annotated[float | None, typer.Option(min=0.001, help="Hours of recent event time to train on.")] = None,
) -> None:
    """Watch the drift topic; on persistent drift retrain on the recent window, gate, promote (until Ctrl-C)."""
    from streamscore.retrain import run_retrainer

    settings = settings_of(ctx)
    updates = {k: v for k, v in {"min_reports": min_reports, "window_h": window_h}.items() if v is not None}
    run_retrainer(settings.model_copy(update={"retrain": settings.retrain.model_copy(update=updates)}))
