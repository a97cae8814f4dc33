"""`streamscore models`: training, the registry (versions, champion, rollback) and retrain decisions."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from streamscore.cli.output import JsonFlag, console, emit, instant, progress_bar, settings_of, show

__all__ = ["models_app", "models_train"]

models_app = typer.Typer(no_args_is_help=True, help="Training and the model registry (MLflow): versions, champion.")


@models_app.command("train")
def models_train(
    ctx: typer.Context,
    events: Annotated[Path, typer.Option(help="Parquet of labelled transactions (the generator's schema).")],
    start: Annotated[datetime, instant("First event time of the training range.")],
    end: Annotated[datetime, instant("End of the range (exclusive); the test window is its tail.")],
    model: Annotated[str, typer.Option(help="mlp (runs fully on CUDA) or gbt (gradient-boosted trees).")] = "mlp",
    seed: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Train on Feast's point-in-time training set, export ONNX, check it, register it, promote if it passes."""
    from streamscore.training import train

    if model not in ("mlp", "gbt"):
        raise typer.BadParameter("--model must be mlp or gbt")
    labels = {"dataset": "training set (Feast, point in time)", "fit": f"training {model}"}
    with progress_bar() as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels[stage], total=total, rate="")
            bar.update(tasks[stage], completed=done, total=total)

        result = train(
            settings_of(ctx), events=events, start=start, end=end,
            kind=model,  # type: ignore[arg-type]
            seed=seed, progress=progress,
        )  # fmt: skip

    def human() -> str:
        table = Table("", "rows", "frauds", "ROC-AUC", "PR-AUC", title=f"{result.card.model_name} v{result.version}")
        for split in ("train", "validation"):
            table.add_row(split, f"{result.rows[split]:,}", f"{result.positives[split]:,}", "", "")
        gate = result.gate
        for name, m in (("test (candidate)", gate.candidate), ("test (baseline)", gate.baseline),
                        (f"test (champion v{gate.champion_version})", gate.champion)):  # fmt: skip
            if m is not None:
                table.add_row(name, f"{int(m['rows']):,}", f"{int(m['positives']):,}", f"{m['roc_auc']:.4f}",
                              f"{m['pr_auc']:.4f}")  # fmt: skip
        show(table)
        for reason in gate.reasons:
            console.print(f"  {'✓' if 'does not' not in reason and 'could not' not in reason else '✗'} {reason}")
        verdict = "[green]promoted to champion[/]" if result.promoted else "[yellow]registered as challenger only[/]"
        phases = ", ".join(f"{phase} {s:.1f}s" for phase, s in result.seconds.items())
        return (
            f"v{result.version} {verdict}; sha256 {result.sha256[:16]}…, threshold {result.card.threshold:.3f}, "
            f"ONNX vs source max |diff| {result.max_abs_diff:.2e}, runs on {result.provider}\n{phases}"
        )

    emit(as_json, result.to_dict(), human)


def _versions_table(versions: list[Any]) -> Table:
    """Champion first, then newest first. The metrics are each version's own test window, which differs
    between versions trained on different ranges: the window is beside them, and the caption says so."""
    table = Table(
        "version", "aliases", "kind", "ROC-AUC", "PR-AUC", "test window (UTC)", "sha256", "created", "artifact",
        caption="ROC-AUC and PR-AUC are measured on each version's own test window: compare versions only on the"
        " same window (the gate compares a candidate with the champion on the candidate's).",
        caption_justify="left",
    )  # fmt: skip
    for v in sorted(versions, key=lambda v: (not v.is_champion, -v.version)):
        window = f"{v.test_start[:16]} → {v.test_end[:16]}" if v.test_start else "not recorded"
        table.add_row(
            f"[bold]{v.version}[/]" if v.is_champion else str(v.version), ",".join(v.aliases), v.kind,
            f"{v.metrics.get('test_roc_auc', float('nan')):.4f}", f"{v.metrics.get('test_pr_auc', float('nan')):.4f}",
            window.replace("T", " "), v.sha256[:12], v.created_at[:19], v.artifact_uri,
        )  # fmt: skip
    return table


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Registered versions (champion first, then newest; --json: newest first), with aliases, test metrics and
    the window they were measured on, sha256 and artifact location."""
    from streamscore.models.registry import Registry

    versions = Registry(settings_of(ctx)).versions()
    emit(as_json, [v.to_dict() for v in versions], lambda: _versions_table(versions), records_when_narrow=True)


@models_app.command("show")
def models_show(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Version number or alias (champion, challenger).")],
    as_json: JsonFlag = False,
) -> None:
    """One version: metadata, model card and gate report."""
    from streamscore.models.registry import Registry

    registry = Registry(settings_of(ctx))
    info = registry.get(version)
    data = {**info.to_dict(), "card": registry.read_json(version, "card.json"),
            "gate": registry.read_json(version, "gate_report.json")}  # fmt: skip

    def human() -> str:
        show(_versions_table([info]), records_when_narrow=True)
        lines = [f"features ({len(data['card']['features'])}): {', '.join(data['card']['features'])}"]
        lines += [f"  gate: {reason}" for reason in data["gate"].get("reasons", [])]
        return "\n".join(lines)

    emit(as_json, data, human)


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    version: Annotated[int, typer.Argument(help="Version to make champion (skips the gate: an operator's call).")],
    as_json: JsonFlag = False,
) -> None:
    """Point the champion alias at VERSION; workers hot-reload it."""
    from streamscore.models.registry import Registry

    info = Registry(settings_of(ctx)).promote(version, reason="promoted by hand (streamscore models promote)")
    emit(as_json, info.to_dict(), lambda: f"v{info.version} is champion")


@models_app.command("rollback")
def models_rollback(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Give the champion alias back to the previous champion."""
    from streamscore.models.registry import Registry

    info = Registry(settings_of(ctx)).rollback()
    emit(as_json, info.to_dict(), lambda: f"rolled back: v{info.version} is champion")


@models_app.command("decisions")
def models_decisions(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """What continuous training decided: each trigger and how it ended (from MLflow)."""
    from streamscore.retrain import decisions

    found = decisions(settings_of(ctx))

    def human() -> Table | str:
        if not found:
            return "no retrain decisions yet (`streamscore retrain run` records them)"
        table = Table("time (UTC)", "step", "version", "detail")
        for d in found:
            version = "" if d.version is None else f"v{d.version}"
            table.add_row(f"{d.time:%Y-%m-%d %H:%M:%S}", d.kind, version, d.detail)
        return table

    emit(as_json, [{**d.__dict__, "time": d.time.isoformat()} for d in found], human)
