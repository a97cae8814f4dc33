"""`streamscore features`: the definitions, the stream processor, the backfill and online reads."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from streamscore.cli.output import JsonFlag, console, emit, instant, progress_bar, settings_of, show

__all__ = ["features_app", "features_backfill"]

features_app = typer.Typer(no_args_is_help=True, help="Windowed features: Feast definitions, stream processor, reads.")


@features_app.command("apply")
def features_apply(ctx: typer.Context) -> None:
    """Register feature_repo/definitions.py in the Feast registry (the programmatic `feast apply`)."""
    from streamscore.store import apply_definitions

    applied = apply_definitions(settings_of(ctx))
    console.print(f"applied {len(applied)} object(s): {', '.join(applied) or 'nothing changed'}")


@features_app.command("plan")
def features_plan(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The window plan compiled from the registry: what the stream and the backfill compute."""
    from streamscore.features import load_plans

    plans = load_plans(settings_of(ctx))

    def human() -> Table:
        table = Table("view", "entity", "feature", "function", "column", "window")
        for p in plans:
            for f in p.features:
                window = str(timedelta(milliseconds=f.window_ms)) if f.window_ms else "-"
                table.add_row(p.name, p.entity_key, f.name, f.function, f.column, window)
        return table

    data = [{"view": p.name, "entity": p.entity_key, "slide_ms": p.slide_ms, "tiles": p.n_tiles,
             "features": [f.__dict__ for f in p.features]} for p in plans]  # fmt: skip
    emit(as_json, data, human)


@features_app.command("run")
def features_run(
    ctx: typer.Context,
    engine: Annotated[
        str | None,
        typer.Option(
            help="faust or kafka (a plain confluent-kafka consumer); default: STREAMSCORE_FEATURES__ENGINE, faust.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """The stream processor: Kafka transactions → windowed features → Feast online store (Redis)."""
    from streamscore.features.runner import run_processor

    settings = settings_of(ctx)
    if engine not in (None, "faust", "kafka"):
        raise typer.BadParameter("--engine must be faust or kafka")
    if engine is not None:
        features = settings.features.model_copy(update={"engine": engine})
        settings = settings.model_copy(update={"features": features})
    run_processor(settings)


@features_app.command("resync")
def features_resync(
    ctx: typer.Context,
    wait_s: Annotated[float, typer.Option("--wait", help="Seconds to wait for the processors.")] = 120.0,
) -> None:
    """Rewrite every entity's current features to the online store, from the running processors' state.

    For when Redis lost data the processors cannot see (they notice restarts, flushes and evictions of their
    markers by themselves). Each processor rewrites the partitions it owns at its next checkpoint round."""
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig

    from streamscore.errors import StreamscoreError
    from streamscore.features.resync import OnlineMarkers
    from streamscore.store.config import redis_connection_string
    from streamscore.store.layout import redis_client

    settings = settings_of(ctx)
    group = settings.features.group_id
    client = redis_client(
        RedisOnlineStoreConfig(connection_string=redis_connection_string(settings.redis)), socket_timeout_s=5.0
    )
    markers = OnlineMarkers(client, group)
    asked = markers.clear()
    if not asked:
        raise StreamscoreError(
            f"no feature processor of group {group!r} has written to this Redis: start `streamscore features run`"
            " (it writes every entity it holds at its first checkpoint)"
        )
    deadline = time.monotonic() + wait_s
    with progress_bar() as bar:
        task = bar.add_task("partitions rewritten", total=asked, rate="")
        while (done := markers.marked(markers.run_id())) < asked:
            bar.update(task, completed=done)
            if time.monotonic() > deadline:
                raise StreamscoreError(
                    f"{done} of {asked} partitions rewritten after {wait_s:.0f}s: are the feature processors running"
                    " (`streamscore top`)? Those that run rewrite theirs at their next checkpoint"
                )
            time.sleep(0.5)
        bar.update(task, completed=asked)
    console.print(f"rewrote the online features of {asked} partition(s) of group {group}")


@features_app.command("get")
def features_get(
    ctx: typer.Context,
    user: Annotated[list[str] | None, typer.Option("--user", help="User id to read (repeatable).")] = None,
    merchant: Annotated[list[str] | None, typer.Option("--merchant", help="Merchant id to read (repeatable).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Read every feature of the given users and merchants through Feast's own get_online_features.

    An entity with no stored feature at all is reported as unknown (Feast returns nothing for it, the same as
    for an id that never transacted); the command fails when none of the ids asked for is known."""
    from streamscore.errors import StreamscoreError
    from streamscore.features import load_plans
    from streamscore.store import feature_store, quiet_feast

    asked = {"user_id": list(dict.fromkeys(user or [])), "merchant_id": list(dict.fromkeys(merchant or []))}
    if not any(asked.values()):
        raise typer.BadParameter("give at least one --user or --merchant")
    settings = settings_of(ctx)
    plans = load_plans(settings)
    store = feature_store(settings)
    found: dict[str, dict[str, dict[str, Any]]] = {}
    with quiet_feast():
        for key, ids in asked.items():
            refs = sorted(f"{p.name}:{f}" for p in plans if p.entity_key == key for f in p.feature_names)
            if not ids or not refs:
                continue
            rows = store.get_online_features(
                features=refs, entity_rows=[{key: i} for i in ids], full_feature_names=True
            ).to_dict()
            names = [ref.replace(":", "__") for ref in refs]  # Feast's full feature names
            found[key] = {i: {name: rows[name][n] for name in names} for n, i in enumerate(ids)}
    known = {
        key: {i: v for i, v in by_id.items() if any(x is not None for x in v.values())} for key, by_id in found.items()
    }
    unknown = [i for key, by_id in found.items() for i in by_id if i not in known[key]]

    def human() -> str:
        for key, by_id in known.items():
            if by_id:
                table = Table("feature", *by_id, title=key)
                for name in next(iter(by_id.values())):
                    table.add_row(name, *(_shown(values[name]) for values in by_id.values()))
                show(table)
        return f"unknown (no features stored): {', '.join(unknown)}" if unknown else ""

    emit(as_json, {**known, "unknown": unknown}, human)
    if not any(known.values()):
        raise StreamscoreError(f"no features stored for {', '.join(unknown)}: unknown ids, or not yet processed")


def _shown(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


@features_app.command("backfill")
def features_backfill(
    ctx: typer.Context,
    events: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="Parquet file of raw transactions, in arrival order.")
    ],
    start: Annotated[datetime, instant("First instant to write feature rows for.")],
    end: Annotated[datetime, instant("Last instant.")],
    materialize: Annotated[bool, typer.Option(help="Also write the values as of --end to the online store.")] = False,
    force: Annotated[bool, typer.Option(help="Replace existing tables even when no event falls in the range.")] = False,
    engine: Annotated[
        str | None, typer.Option(help="duckdb (this machine) or spark; default: setting features.backfill_engine.")
    ] = None,
    master: Annotated[
        str | None,
        typer.Option(
            help="Spark master for --engine spark (local[4], spark://host:7077, yarn); default: features.spark_master."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Compute the same features over history: offline tables for training, optionally the online store."""
    from streamscore.features import backfill, load_plans, rules_for

    settings = settings_of(ctx)
    engine = engine or settings.features.backfill_engine
    if engine not in ("duckdb", "spark"):
        raise typer.BadParameter("--engine must be duckdb or spark")
    if master is not None and engine != "spark":
        raise typer.BadParameter("--master is for --engine spark")
    if engine == "spark":
        from functools import partial

        from streamscore.features.backfill_spark import backfill_spark
        from streamscore.spark import require_spark

        require_spark()  # before anything else: one line saying what to install
        backfill = partial(backfill_spark, master=master or settings.features.spark_master)
    plans = load_plans(settings)
    existing = [p for p in plans if (settings.data_dir / "offline" / f"{p.name}.parquet").exists()]
    if existing and not force:
        _refuse_empty_range(events, start, end, settings.data_dir / "offline")
    sink = None
    if materialize:
        from streamscore.store import OnlineWriter

        writer = OnlineWriter(settings)

        def sink(plan: Any, ids: list[str], values: Any, event_ms: Any) -> None:
            writer.write(plan.name, ids, {n: values[:, j] for j, n in enumerate(plan.feature_names)}, event_ms)

    started = time.perf_counter()
    with progress_bar() as bar:
        tasks: dict[str, Any] = {}

        def progress(view: str, done: int, total: int) -> None:
            if view not in tasks:
                tasks[view] = bar.add_task(f"backfill {view}", total=total, rate="")
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.update(tasks[view], completed=done, rate=f"{done / elapsed:,.0f} ev/s")

        report = backfill(
            events, plans, settings.data_dir / "offline", start=start, end=end,
            rules=rules_for(settings, plans), progress=progress, online=sink,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    summary = {"events_read": report.events_read, "accepted": report.accepted, "dropped": report.dropped}

    def human() -> str:
        table = Table("view", "rows written", "entities", "offline table")
        for v in report.views:
            table.add_row(v.view, f"{v.rows:,}", f"{v.entities:,}", str(v.path))
        show(table)
        return (
            f"{report.events_read:,} events read, {report.accepted:,} accepted "
            f"({report.events_read - report.accepted:,} invalid, duplicate or late) in {seconds:.1f}s"
            + ("; online store materialized" if materialize else "")
        )

    emit(as_json, {**summary, "views": [v.__dict__ for v in report.views], "seconds": seconds}, human)


def _refuse_empty_range(events: Path, start: datetime, end: datetime, offline: Path) -> None:
    """A range that holds no event would rewrite the offline tables empty: the training data gone."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from streamscore.errors import StreamscoreError

    times = pq.read_table(events, columns=["event_time"]).column("event_time")
    inside = pc.sum(pc.and_(pc.greater_equal(times, start), pc.less_equal(times, end))).as_py() or 0
    if inside:
        return
    spans = (
        "is empty"
        if len(times) == 0
        else f"spans {pc.min(times).as_py():%Y-%m-%dT%H:%M:%S} … {pc.max(times).as_py():%Y-%m-%dT%H:%M:%S}"
    )
    raise StreamscoreError(
        f"no event of {events} falls in {start:%Y-%m-%dT%H:%M:%S} … {end:%Y-%m-%dT%H:%M:%S} (the file {spans}):"
        f" the tables in {offline} would be replaced by empty ones; pass --force to do that anyway"
    )
