"""The `streamscore` command line: one entry point for every stage.

Settings are loaded once here and handed down. Failures a user can fix (bad configuration, a stack that
will not start) print one line on stderr and exit non-zero, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamscore.errors import StreamscoreError
from streamscore.settings import Settings, load_settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Real-time features and scoring on Kafka.",
)
stack_app = typer.Typer(no_args_is_help=True, help="The local Kafka + Redis stack (no Docker needed).")
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics declared by streamscore.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
features_app = typer.Typer(no_args_is_help=True, help="Windowed features: Feast definitions, stream processor, reads.")
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(config_app, name="config")
app.add_typer(features_app, name="features")
models_app = typer.Typer(no_args_is_help=True, help="The model registry (MLflow): versions, champion, rollback.")
app.add_typer(models_app, name="models")
inference_app = typer.Typer(no_args_is_help=True, help="Inference workers: score requests → predictions.")
app.add_typer(inference_app, name="inference")

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
    # Rich for people at a terminal; one plain line per record for log collectors (Rich would wrap at 80).
    handler: logging.Handler = (
        RichHandler(console=err_console, show_path=False) if err_console.is_terminal else logging.StreamHandler()
    )
    fmt = "%(name)s: %(message)s" if err_console.is_terminal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=settings.log_level, format=fmt, handlers=[handler])
    for noisy in ("feast", "httpx"):  # httpx logs every request (Prometheus, MLflow) at INFO
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    ctx.obj = settings


@stack_app.command("up")
def stack_up(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Start Kafka and Redis on loopback (fetching Kafka from Maven Central once); idempotent."""
    from streamscore.stack import Stack

    stack = Stack(_settings(ctx), on_event=None if as_json else lambda m: err_console.print(f"[dim]{m}[/]"))
    statuses = stack.up()
    if as_json:
        _print_json([s.as_dict() for s in statuses])
    else:
        _status_table(statuses)


@stack_app.command("fetch")
def stack_fetch(ctx: typer.Context) -> None:
    """Download the Kafka broker jars from Maven Central into the cache (once)."""
    from streamscore.stack.components import KafkaComponent

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
    from streamscore.stack import Stack

    for name, outcome in Stack(_settings(ctx)).down(wipe=wipe):
        console.print(f"{name}: {outcome}{' (data wiped)' if wipe else ''}")


@stack_app.command("status")
def stack_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """State, address, version and pid of each component."""
    from streamscore.stack import Stack

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
    from streamscore.kafka import ensure_topics

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
    from streamscore.kafka import topic_specs

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
    from streamscore.settings import settings_markdown

    sys.stdout.write(settings_markdown())


@app.command("demo")
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

    run_demo(_settings(ctx), console=console, history_events=history, live_events=live, drifted_events=drifted,
             after_events=after)  # fmt: skip


def _utc(value: datetime | None) -> datetime | None:
    """typer parses datetimes as naive; streamscore's times are UTC."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err_console,
    )


@app.command("generate")
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
        typer.Option(
            help="First event time (UTC). Default: the start that puts the last event just before now (the span"
            " is measured on the stream, daily cycle included); with --realtime, now."
        ),
    ] = None,
    drift_at: Annotated[datetime | None, typer.Option(help="Distributions shift from this event time (UTC).")] = None,
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
            start=_utc(start) or now, drift_at=_utc(drift_at),
        )  # fmt: skip
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if start is None and not realtime:
        config = dataclasses.replace(config, start=start_ending_by(config, now))
    first = config.start
    if to != "kafka" and not to.endswith(".parquet"):
        raise typer.BadParameter("--to must be 'kafka' or a path ending in .parquet")
    if requests and to != "kafka":
        raise typer.BadParameter("--requests needs --to kafka")
    with _progress() as bar:
        task = bar.add_task(f"generating → {to}", total=events, rate="")
        advance = lambda n: bar.advance(task, n)  # noqa: E731
        if to == "kafka":
            count = produce_to_kafka(config, _settings(ctx), realtime=realtime, requests=requests, progress=advance)
        else:
            count = write_parquet(config, Path(to), progress=advance)
    console.print(f"{count:,} events ({first.isoformat()} onwards) → {to}")


@features_app.command("apply")
def features_apply(ctx: typer.Context) -> None:
    """Register feature_repo/definitions.py in the Feast registry (the programmatic `feast apply`)."""
    from streamscore.store import apply_definitions

    applied = apply_definitions(_settings(ctx))
    console.print(f"applied {len(applied)} object(s): {', '.join(applied) or 'nothing changed'}")


@features_app.command("plan")
def features_plan(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The window plan compiled from the registry: what the stream and the backfill compute."""
    from streamscore.features import load_plans

    plans = load_plans(_settings(ctx))
    if as_json:
        _print_json([{"view": p.name, "entity": p.entity_key, "slide_ms": p.slide_ms, "tiles": p.n_tiles,
                      "features": [f.__dict__ for f in p.features]} for p in plans])  # fmt: skip
        return
    table = Table("view", "entity", "feature", "function", "column", "window")
    for p in plans:
        for f in p.features:
            window = str(timedelta(milliseconds=f.window_ms)) if f.window_ms else "-"
            table.add_row(p.name, p.entity_key, f.name, f.function, f.column, window)
    console.print(table)


@features_app.command("run")
def features_run(ctx: typer.Context) -> None:
    """The stream processor: Kafka transactions → windowed features → Feast online store (Redis)."""
    from streamscore.features.runner import run_processor

    run_processor(_settings(ctx))


@features_app.command("get")
def features_get(
    ctx: typer.Context,
    user: Annotated[list[str], typer.Option("--user", help="User ids to read (repeatable).")],
    merchant: Annotated[str, typer.Option(help="Merchant id paired with each user.")] = "m0000",
    as_json: JsonFlag = False,
) -> None:
    """Read the model's features through Feast's own get_online_features."""
    from streamscore.store import feature_store, quiet_feast

    store = feature_store(_settings(ctx))
    with quiet_feast():
        service = store.get_feature_service("fraud_model_v1")
        rows = store.get_online_features(
            features=service, entity_rows=[{"user_id": u, "merchant_id": merchant} for u in user]
        ).to_dict()
    if as_json:
        _print_json(rows)
        return
    table = Table("feature", *user)
    for name, values in rows.items():
        if name in ("user_id", "merchant_id"):
            continue
        table.add_row(name, *("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in values))
    console.print(table)


@app.command("feast", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def feast_cli(ctx: typer.Context) -> None:
    """Feast's own CLI on feature_repo/, configured from the STREAMSCORE_* settings (e.g. `streamscore feast
    feature-views list`)."""
    import os
    import subprocess

    from streamscore.store import REPO_PATH, feast_env, settings_env

    settings = _settings(ctx)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STREAMSCORE_")}
    env.update(settings_env(settings) | feast_env(settings))
    # The module, not the `feast` script: an image or a venv may hold the package without its scripts dir.
    command = [sys.executable, "-m", "feast.cli.cli", "-c", str(REPO_PATH), *ctx.args]
    raise typer.Exit(subprocess.run(command, env=env, check=False).returncode)


@app.command("backfill")
def backfill_cmd(
    ctx: typer.Context,
    events: Annotated[Path, typer.Option(help="Parquet file of raw transactions, in arrival order.")],
    start: Annotated[datetime, typer.Option(help="First instant to write feature rows for (UTC).")],
    end: Annotated[datetime, typer.Option(help="Last instant (UTC).")],
    materialize: Annotated[bool, typer.Option(help="Also write the values as of --end to the online store.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Compute the same features over history: offline tables for training, optionally the online store."""
    from streamscore.features import backfill, load_plans, rules_for

    settings = _settings(ctx)
    plans = load_plans(settings)
    writer = None
    if materialize:
        from streamscore.store import OnlineWriter

        writer = OnlineWriter(settings)
    sink = None
    if writer is not None:
        w = writer

        def sink(plan: Any, ids: list[str], values: Any, event_ms: Any) -> None:
            w.write(plan.name, ids, {n: values[:, j] for j, n in enumerate(plan.feature_names)}, event_ms)

    started = time.perf_counter()
    with _progress() as bar:
        tasks: dict[str, Any] = {}

        def progress(view: str, done: int, total: int) -> None:
            if view not in tasks:
                tasks[view] = bar.add_task(f"backfill {view}", total=total, rate="")
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.update(tasks[view], completed=done, rate=f"{done / elapsed:,.0f} ev/s")

        report = backfill(
            events, plans, settings.data_dir / "offline", start=_utc(start) or start, end=_utc(end) or end,
            rules=rules_for(settings, plans), progress=progress, online=sink,
        )  # fmt: skip
    if as_json:
        summary = {"events_read": report.events_read, "accepted": report.accepted, "dropped": report.dropped}
        _print_json({**summary, "views": [v.__dict__ for v in report.views], "seconds": time.perf_counter() - started})
        return
    table = Table("view", "rows written", "entities", "offline table")
    for v in report.views:
        table.add_row(v.view, f"{v.rows:,}", f"{v.entities:,}", str(v.path))
    console.print(table)
    console.print(
        f"{report.events_read:,} events read, {report.accepted:,} accepted "
        f"({report.events_read - report.accepted:,} invalid, duplicate or late) in {time.perf_counter() - started:.1f}s"
        + ("; online store materialized" if materialize else "")
    )


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    events: Annotated[Path, typer.Option(help="Parquet of labelled transactions (the generator's schema).")],
    start: Annotated[datetime, typer.Option(help="First event time of the training range (UTC).")],
    end: Annotated[datetime, typer.Option(help="End of the range (UTC, exclusive); the test window is its tail.")],
    model: Annotated[str, typer.Option(help="mlp (runs fully on CUDA) or gbt (gradient-boosted trees).")] = "mlp",
    seed: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Train on Feast's point-in-time training set, export ONNX, check it, register it, promote if it passes."""
    from streamscore.training import train

    if model not in ("mlp", "gbt"):
        raise typer.BadParameter("--model must be mlp or gbt")
    labels = {"dataset": "training set (Feast, point in time)", "fit": f"training {model}"}
    with _progress() as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels[stage], total=total, rate="")
            bar.update(tasks[stage], completed=done, total=total)

        result = train(
            _settings(ctx), events=events, start=_utc(start) or start, end=_utc(end) or end,
            kind=model,  # type: ignore[arg-type]
            seed=seed, progress=progress,
        )  # fmt: skip
    if as_json:
        _print_json(result.to_dict())
        return
    table = Table("", "rows", "frauds", "ROC-AUC", "PR-AUC", title=f"{result.card.model_name} v{result.version}")
    for split in ("train", "validation"):
        table.add_row(split, f"{result.rows[split]:,}", f"{result.positives[split]:,}", "", "")
    gate = result.gate
    for name, m in (("test (candidate)", gate.candidate), ("test (baseline)", gate.baseline),
                    (f"test (champion v{gate.champion_version})", gate.champion)):  # fmt: skip
        if m is not None:
            table.add_row(name, f"{int(m['rows']):,}", f"{int(m['positives']):,}", f"{m['roc_auc']:.4f}",
                          f"{m['pr_auc']:.4f}")  # fmt: skip
    console.print(table)
    for reason in gate.reasons:
        console.print(f"  {'✓' if 'does not' not in reason and 'could not' not in reason else '✗'} {reason}")
    verdict = "[green]promoted to champion[/]" if result.promoted else "[yellow]registered as challenger only[/]"
    console.print(
        f"v{result.version} {verdict}; sha256 {result.sha256[:16]}…, threshold {result.card.threshold:.3f}, "
        f"ONNX vs source max |diff| {result.max_abs_diff:.2e}, runs on {result.provider}"
    )


def _versions_table(versions: list[Any]) -> Table:
    table = Table("version", "aliases", "kind", "ROC-AUC", "PR-AUC", "sha256", "created", "artifact")
    for v in versions:
        table.add_row(
            str(v.version), ",".join(v.aliases), v.kind, f"{v.metrics.get('test_roc_auc', float('nan')):.4f}",
            f"{v.metrics.get('test_pr_auc', float('nan')):.4f}", v.sha256[:12], v.created_at[:19], v.artifact_uri,
        )  # fmt: skip
    return table


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Registered versions, newest first, with aliases, sha256, artifact location and test metrics."""
    from streamscore.models.registry import Registry

    versions = Registry(_settings(ctx)).list()
    if as_json:
        _print_json([v.to_dict() for v in versions])
        return
    console.print(_versions_table(versions))


@models_app.command("show")
def models_show(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Version number or alias (champion, challenger).")],
    as_json: JsonFlag = False,
) -> None:
    """One version: metadata, model card and gate report."""
    from streamscore.models.registry import Registry

    registry = Registry(_settings(ctx))
    info = registry.get(version)
    data = {**info.to_dict(), "card": registry.read_json(version, "card.json"),
            "gate": registry.read_json(version, "gate_report.json")}  # fmt: skip
    if as_json:
        _print_json(data)
        return
    console.print(_versions_table([info]))
    console.print(f"features ({len(data['card']['features'])}): {', '.join(data['card']['features'])}")
    for reason in data["gate"].get("reasons", []):
        console.print(f"  gate: {reason}")


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    version: Annotated[int, typer.Argument(help="Version to make champion (skips the gate: an operator's call).")],
    as_json: JsonFlag = False,
) -> None:
    """Point the champion alias at VERSION; workers hot-reload it."""
    from streamscore.models.registry import Registry

    info = Registry(_settings(ctx)).promote(version, reason="promoted by hand (streamscore models promote)")
    if as_json:
        _print_json(info.to_dict())
        return
    console.print(f"v{info.version} is champion")


@models_app.command("rollback")
def models_rollback(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Give the champion alias back to the previous champion."""
    from streamscore.models.registry import Registry

    info = Registry(_settings(ctx)).rollback()
    if as_json:
        _print_json(info.to_dict())
        return
    console.print(f"rolled back: v{info.version} is champion")


@inference_app.command("run")
def inference_run(
    ctx: typer.Context,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (partitions bound parallelism).")] = 1,
    max_batch: Annotated[int | None, typer.Option(min=1, help="Most requests per batch.")] = None,
    max_delay_ms: Annotated[int | None, typer.Option(min=0, help="Longest wait to fill a batch.")] = None,
    guarantee: Annotated[str | None, typer.Option(help="at-least-once (default) or exactly-once.")] = None,
) -> None:
    """Score requests from Kafka with the champion model until SIGTERM/Ctrl-C (the batch in hand finishes)."""
    from streamscore.inference import run_workers

    settings = _settings(ctx)
    updates = {k: v for k, v in {"max_batch": max_batch, "max_delay_ms": max_delay_ms, "guarantee": guarantee}.items()
               if v is not None}  # fmt: skip
    if guarantee is not None and guarantee not in ("at-least-once", "exactly-once"):
        raise typer.BadParameter("--guarantee must be at-least-once or exactly-once")
    settings = settings.model_copy(update={"inference": settings.inference.model_copy(update=updates)})
    if workers == 1:
        run_workers(settings)
        return
    _spawn_workers(settings, workers)


@app.command("top")
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

    run_top(_settings(ctx), refresh, once, png=png, as_json=as_json, width=width)


@app.command("report")
def report(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="HTML file to write (the figure also goes to a .png beside it).")] = Path(
        "streamscore-report.html"
    ),
    since: Annotated[str | None, typer.Option(help="How far back, e.g. 30m, 1h, 2d (default: the last hour).")] = None,
    start: Annotated[datetime | None, typer.Option(help="First instant (UTC); instead of --since.")] = None,
    end: Annotated[datetime | None, typer.Option(help="Last instant (UTC); default now.")] = None,
) -> None:
    """An HTML report with plots: throughput, latency, freshness, drift per feature, retrains marked."""
    from streamscore.monitoring.report import build_report, figure_path, parse_since

    if since is not None:
        if start is not None:
            raise typer.BadParameter("give --since or --start, not both")
        start = datetime.now(tz=UTC) - parse_since(since)
    path = build_report(_settings(ctx), out, _utc(start), _utc(end))
    console.print(f"wrote {path} and {figure_path(path)}")


@app.command("retrain-on-drift")
def retrain_on_drift(
    ctx: typer.Context,
    min_reports: Annotated[int | None, typer.Option(min=1, help="Drifted reports in a row that trigger.")] = None,
    window_h: Annotated[float | None, typer.Option(min=0.001, help="Hours of recent event time to train on.")] = None,
) -> None:
    """Watch the drift topic; on persistent drift retrain on the recent window, gate, promote (until Ctrl-C)."""
    from streamscore.retrain import run_retrainer

    settings = _settings(ctx)
    updates = {k: v for k, v in {"min_reports": min_reports, "window_h": window_h}.items() if v is not None}
    run_retrainer(settings.model_copy(update={"retrain": settings.retrain.model_copy(update=updates)}))


@models_app.command("decisions")
def models_decisions(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """What continuous training decided: each trigger and how it ended (from MLflow)."""
    from streamscore.retrain import decisions

    found = decisions(_settings(ctx))
    if as_json:
        _print_json([{**d.__dict__, "time": d.time.isoformat()} for d in found])
        return
    table = Table("time (UTC)", "step", "version", "detail")
    for d in found:
        table.add_row(f"{d.time:%Y-%m-%d %H:%M:%S}", d.kind, "" if d.version is None else f"v{d.version}", d.detail)
    console.print(table if found else "no retrain decisions yet (`streamscore retrain-on-drift` records them)")


def _spawn_workers(settings: Settings, workers: int) -> None:
    """N single-worker processes (each serves metrics on the next free port); SIGTERM reaches all."""
    import os
    import signal
    import subprocess

    from streamscore.store import settings_env

    procs = []
    for i in range(workers):
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STREAMSCORE_")}
        env.update(settings_env(settings))
        if settings.inference.instance_id:  # one name per process: two with the same one would fence each other
            env["STREAMSCORE_INFERENCE__INSTANCE_ID"] = f"{settings.inference.instance_id}-{i}"
        procs.append(subprocess.Popen([sys.executable, "-m", "streamscore", "inference", "run"], env=env))

    def forward(signum: int, _: Any) -> None:
        for proc in procs:
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [proc.wait() for proc in procs]
    if any(codes):
        raise typer.Exit(max(codes))


def main() -> None:
    """Console-script entry point: errors a user can act on become one line and an exit code."""
    try:
        app()
    except StreamscoreError as exc:
        kind = "configuration error" if exc.exit_code == 2 else "error"
        err_console.print(f"[red]{kind}:[/] {exc}", soft_wrap=True)
        sys.exit(exc.exit_code)
