"""`streamscore top` and `streamscore report`: the operator's views, read from Prometheus."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from streamscore.cli.output import JsonFlag, console, duration, instant, settings_of

__all__ = ["report", "top"]


def top(
    ctx: typer.Context,
    refresh: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option(help="Print one frame and exit.")] = False,
    png: Annotated[Path | None, typer.Option(help="Write one frame as a PNG image (implies --once).")] = None,
    width: Annotated[int, typer.Option(min=60, help="Columns of the --png frame.")] = 110,
    as_json: JsonFlag = False,
) -> None:
    """Live view of every service, read from Prometheus: throughput, lag, latency, freshness, drift, model."""
    from streamscore.monitoring.top import run_top

    run_top(settings_of(ctx), refresh, once, png=png, as_json=as_json, width=width)


def report(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="HTML file to write (the figure also goes to a .png beside it).")] = Path(
        "streamscore-report.html"
    ),
    since: Annotated[timedelta | None, duration("How far back, e.g. 30m, 1h, 2d (default: the last hour).")] = None,
    start: Annotated[datetime | None, instant("First instant, instead of --since.")] = None,
    end: Annotated[datetime | None, instant("Last instant; default now.")] = None,
) -> None:
    """An HTML report with plots: throughput, latency, freshness, drift per feature, retrains marked."""
    from streamscore.monitoring.report import build_report, figure_path

    if since is not None:
        if start is not None:
            raise typer.BadParameter("give --since or --start, not both")
        start = datetime.now(tz=UTC) - since
    path = build_report(settings_of(ctx), out, start, end)
    console.print(f"wrote {path} and {figure_path(path)}")
