"""What every command shares: the consoles, the settings handed down, and JSON-or-human output.

Human output goes through rich to stdout; progress bars and log lines to stderr, so ``--json`` output on
stdout stays parseable whatever else is printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamscore.settings import Settings

__all__ = ["JsonFlag", "console", "emit", "err_console", "print_json", "progress_bar", "settings_of", "show", "utc"]

console = Console()
err_console = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def settings_of(ctx: typer.Context) -> Settings:
    """The settings the root callback loaded once for this invocation."""
    root = ctx.find_root()
    settings = root.obj
    assert isinstance(settings, Settings)
    return settings


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def emit(as_json: bool, data: Any, human: Callable[[], RenderableType | str]) -> None:
    """``data`` as JSON with ``--json``, else what ``human()`` renders (built only when it is shown)."""
    if as_json:
        print_json(data)
    else:
        show(human())


def show(renderable: RenderableType | str) -> None:
    """Print for a person. A table's cells fold instead of ending in "…": at 80 columns or in a pipe rich
    would otherwise cut the very ids and aliases the table is there to show (``challen…``)."""
    if isinstance(renderable, Table):
        for column in renderable.columns:
            column.overflow = "fold"
    if renderable != "":
        console.print(renderable)


def utc(value: datetime) -> datetime:
    """typer parses datetimes as naive; streamscore's times are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err_console,
    )
