"""`streamscore stack` and `streamscore topics`: the local Kafka + Redis + Prometheus and the declared topics."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from streamscore.cli.output import JsonFlag, console, emit, err_console, settings_of

__all__ = ["stack_app", "topics_app"]

stack_app = typer.Typer(no_args_is_help=True, help="The local Kafka + Redis stack (no Docker needed).")
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics declared by streamscore.")


@stack_app.command("up")
def stack_up(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Start Kafka and Redis on loopback (fetching Kafka from Maven Central once); idempotent."""
    from streamscore.stack import Stack

    stack = Stack(settings_of(ctx), on_event=None if as_json else lambda m: err_console.print(f"[dim]{m}[/]"))
    statuses = stack.up()
    emit(as_json, [s.as_dict() for s in statuses], lambda: _status_table(statuses))


@stack_app.command("fetch")
def stack_fetch(ctx: typer.Context) -> None:
    """Download the Kafka broker jars from Maven Central into the cache (once)."""
    from streamscore.stack.components import KafkaComponent

    kafka = KafkaComponent(settings_of(ctx))
    with err_console.status(f"fetching Apache Kafka {kafka.version} from Maven Central"):
        libs = kafka.fetch_jars()
    console.print(f"Kafka {kafka.version}: {len(list(libs.glob('*.jar')))} jars in {libs}")


@stack_app.command("down")
def stack_down(
    ctx: typer.Context,
    wipe: Annotated[bool, typer.Option(help="Also delete Kafka and Redis data.")] = False,
) -> None:
    """Stop the processes `stack up` started (never anything else); data is kept unless --wipe."""
    from streamscore.stack import Stack

    for name, outcome in Stack(settings_of(ctx)).down(wipe=wipe):
        console.print(f"{name}: {outcome}{' (data wiped)' if wipe else ''}")


@stack_app.command("status")
def stack_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """State, address, version and pid of each component."""
    from streamscore.stack import Stack

    statuses = Stack(settings_of(ctx)).status()
    emit(as_json, [s.as_dict() for s in statuses], lambda: _status_table(statuses))


def _status_table(statuses: list[Any]) -> Table:
    table = Table("component", "state", "address", "version", "pid", "log")
    colors = {"running": "green", "started": "green", "external": "cyan", "stopped": "yellow"}
    for s in statuses:
        color = colors.get(s.state, "red")
        table.add_row(s.name, f"[{color}]{s.state}[/]", s.address, s.version or "-", str(s.pid or "-"), s.log)
    return table


@topics_app.command("create")
def topics_create(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Create the declared topics that are missing; report the ones found. Idempotent."""
    from streamscore.kafka import ensure_topics

    results = ensure_topics(settings_of(ctx))

    def human() -> Table:
        table = Table("topic", "status", "partitions", "detail")
        for r in results:
            color = {"created": "green", "exists": "cyan"}.get(r.status, "red")
            table.add_row(r.name, f"[{color}]{r.status}[/]", str(r.partitions), r.detail)
        return table

    emit(as_json, [r.__dict__ for r in results], human)


@topics_app.command("list")
def topics_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The declared topics, their purpose and configuration."""
    from streamscore.kafka import topic_specs

    specs = topic_specs(settings_of(ctx))

    def human() -> Table:
        table = Table("topic", "partitions", "retention", "purpose")
        for s in specs:
            days = int(s.config.get("retention.ms", 0)) / 86_400_000
            kept = "compacted" if s.config.get("cleanup.policy") == "compact" else f"{days:g} d"
            table.add_row(s.name, str(s.partitions), kept, s.purpose)
        return table

    emit(as_json, [s.__dict__ for s in specs], human)
