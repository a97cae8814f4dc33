"""What every command shares: the consoles, the settings handed down, and JSON-or-human output.

Human output goes through rich to stdout; progress bars and log lines to stderr, so ``--json`` output on
stdout stays parseable whatever else is printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from streamscore.settings import Settings
from streamscore.timespec import TimespecError, parse_duration, parse_instant

__all__ = [
    "JsonFlag", "console", "duration", "emit", "err_console", "instant", "print_json", "progress_bar",
    "settings_of", "show",
]  # fmt: skip

console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def _usage_errors(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` for a typer option: a TimespecError becomes click's usage error (exit 2, names the option)."""

    def parser(text: str) -> T:
        try:
            return parse(text)
        except TimespecError as exc:
            raise typer.BadParameter(str(exc)) from None

    return parser


def duration(help: str) -> Any:
    """A duration option: ``90s``, ``15m``, ``1h30m``, ``2d`` (a bare number is refused)."""
    return typer.Option(parser=_usage_errors(parse_duration), metavar="DURATION", help=help)


def instant(help: str) -> Any:
    """A time option: ISO 8601, ``now`` or a time before now (``-2d``), see :mod:`streamscore.timespec`."""
    return typer.Option(
        parser=_usage_errors(parse_instant),
        metavar="WHEN",
        help=f"{help} ISO 8601 (UTC unless it has an offset), now, or -2d, -90m.",
    )


def settings_of(ctx: typer.Context) -> Settings:
    """The settings the root callback loaded once for this invocation."""
    root = ctx.find_root()
    settings = root.obj
    assert isinstance(settings, Settings)
    return settings


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def emit(
    as_json: bool, data: Any, human: Callable[[], RenderableType | str], *, records_when_narrow: bool = False
) -> None:
    """``data`` as JSON with ``--json``, else what ``human()`` renders (built only when it is shown)."""
    if as_json:
        print_json(data)
    else:
        show(human(), records_when_narrow=records_when_narrow)


def show(renderable: RenderableType | str, *, records_when_narrow: bool = False) -> None:
    """Print for a person. A table's cells fold instead of ending in "…": at 80 columns or in a pipe rich
    would otherwise cut the very ids and aliases the table is there to show (``challen…``). A wide table of
    records (one row per thing, many attributes) is printed one record per block instead when it does not
    fit the terminal, with ``records_when_narrow``: folded into nine narrow columns it is unreadable."""
    if isinstance(renderable, Table):
        if records_when_narrow and _natural_width(renderable) > console.width:
            _print_records(renderable)
            return
        for column in renderable.columns:
            column.overflow = "fold"
    if renderable != "":
        console.print(renderable)


def _natural_width(table: Table) -> int:
    """The width the table needs without folding: widest cell of each column, padding and borders."""
    widths = [
        max(Text.from_markup(str(cell)).cell_len for cell in [column.header, *column.cells]) for column in table.columns
    ]
    return sum(widths) + 3 * len(widths) + 1


def _print_records(table: Table) -> None:
    cells = [list(column.cells) for column in table.columns]
    for row in range(table.row_count):
        record = Table.grid(padding=(0, 2))
        record.add_column(justify="right", style="bold")
        record.add_column(overflow="fold")
        for column, values in zip(table.columns, cells, strict=True):
            record.add_row(column.header, values[row])
        if row:
            console.print()
        console.print(record, highlight=False)
    if table.caption:
        console.print()
        console.print(table.caption, highlight=False)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err_console,
    )
