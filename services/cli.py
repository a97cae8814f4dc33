"""The `streamscore` command line: one entry point for every stage.

Settings are loaded once here and handed down. Failures a user can fix (bad configuration, a stack that
will not start) print one line on stderr and exit non-zero, never a traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from services.errors import StreamscoreError
from services.settings import Settings, load_settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Real-time features and scoring on Kafka.",
)
stack_app = typer.Typer(no_args_is_help=True, help="The local Kafka + Redis stack (no Docker needed).")
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics declared by streamscore.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.callback()
def _load(ctx: typer.Context) -> None:
    import logging

    from rich.logging import RichHandler

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )
    ctx.obj = settings


@stack_app.command("up")
def stack_up(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Start Kafka and Redis on loopback (fetching Kafka from Maven Central once); idempotent."""
    from services.stack import Stack

    stack = Stack(_settings(ctx), on_event=None if as_json else lambda m: err_console.print(f"[dim]{m}[/]"))
    statuses = stack.up()
    if as_json:
        _print_json([s.as_dict() for s in statuses])
    else:
        _status_table(statuses)


@stack_app.command("fetch")
def stack_fetch(ctx: typer.Context) -> None:
    """Download the Kafka broker jars from Maven Central into the cache (once)."""
    from services.stack.components import KafkaComponent

    kafka = KafkaComponent(_settings(ctx))
    with err_console.status(f"fetching Apache Kafka {kafka.version} from Maven Central"):
        libs = kafka.fetch_jars()
    console.print(f"Kafka {kafka.version}: {len(list(libs.glob('*.jar')))} jars in {libs}")


@stack_app.command("down")
def stack_down(
    ctx: typer.Context,
    wipe: Annotated[bool, typer.Option(help="Also delete Kafka and Redis data.")] = False,
) -> None:
    """Stop the processes `stack up` started (never anything else); data is kept unless --wipe."""
    from services.stack import Stack

    for name, outcome in Stack(_settings(ctx)).down(wipe=wipe):
        console.print(f"{name}: {outcome}{' (data wiped)' if wipe else ''}")


@stack_app.command("status")
def stack_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """State, address, version and pid of each component."""
    from services.stack import Stack

    statuses = Stack(_settings(ctx)).status()
    if as_json:
        _print_json([s.as_dict() for s in statuses])
    else:
        _status_table(statuses)


def _status_table(statuses: list[Any]) -> None:
    table = Table("component", "state", "address", "version", "pid", "log")
    colors = {"running": "green", "started": "green", "external": "cyan", "stopped": "yellow"}
    for s in statuses:
        color = colors.get(s.state, "red")
        table.add_row(s.name, f"[{color}]{s.state}[/]", s.address, s.version or "-", str(s.pid or "-"), s.log)
    console.print(table)


@topics_app.command("create")
def topics_create(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Create the declared topics that are missing; report the ones found. Idempotent."""
    from services.kafka import ensure_topics

    results = ensure_topics(_settings(ctx))
    if as_json:
        _print_json([r.__dict__ for r in results])
        return
    table = Table("topic", "status", "partitions", "detail")
    for r in results:
        color = {"created": "green", "exists": "cyan"}.get(r.status, "red")
        table.add_row(r.name, f"[{color}]{r.status}[/]", str(r.partitions), r.detail)
    console.print(table)


@topics_app.command("list")
def topics_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The declared topics, their purpose and configuration."""
    from services.kafka import topic_specs

    specs = topic_specs(_settings(ctx))
    if as_json:
        _print_json([s.__dict__ for s in specs])
        return
    table = Table("topic", "partitions", "retention (days)", "purpose")
    for s in specs:
        table.add_row(s.name, str(s.partitions), str(int(s.config["retention.ms"]) // 86_400_000), s.purpose)
    console.print(table)


@config_app.command("show")
def config_show(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The effective settings (secrets masked)."""
    data = _settings(ctx).model_dump(mode="json")
    if as_json:
        _print_json(data)
    else:
        console.print_json(json.dumps(data))


@config_app.command("table")
def config_table() -> None:
    """The configuration table in Markdown, as the README embeds it."""
    from services.settings import settings_markdown

    sys.stdout.write(settings_markdown())


@app.command("demo")
def demo(
    ctx: typer.Context,
    events: Annotated[int, typer.Option(min=1, max=10_000, help="How many events to send.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed of the sample events.")] = 7,
) -> None:
    """Send a handful of Avro transactions through Kafka and print them as read back."""
    from services.demo import run_demo

    run_demo(_settings(ctx), events=events, seed=seed, console=console)


def main() -> None:
    """Console-script entry point: errors a user can act on become one line and an exit code."""
    try:
        app()
    except StreamscoreError as exc:
        kind = "configuration error" if exc.exit_code == 2 else "error"
        err_console.print(f"[red]{kind}:[/] {exc}", soft_wrap=True)
        sys.exit(exc.exit_code)
