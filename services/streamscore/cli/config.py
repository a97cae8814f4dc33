"""`streamscore config`: the effective settings, and the table the docs embed."""

from __future__ import annotations

import json
import sys

import typer

from streamscore.cli.output import JsonFlag, console, print_json, settings_of

__all__ = ["config_app"]

config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")


@config_app.command("show")
def config_show(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The effective settings (secrets masked)."""
    data = settings_of(ctx).model_dump(mode="json")
    if as_json:
        print_json(data)
    else:
        console.print_json(json.dumps(data))


@config_app.command("table")
def config_table() -> None:
    """The configuration table in Markdown, as docs/configuration.md embeds it."""
    from streamscore.settings import settings_markdown

    sys.stdout.write(settings_markdown())
