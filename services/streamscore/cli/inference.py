"""`streamscore inference`: the scoring workers."""

from __future__ import annotations

from typing import Annotated

import typer

from streamscore.cli.output import settings_of

__all__ = ["inference_app"]

inference_app = typer.Typer(no_args_is_help=True, help="Inference workers: score requests → predictions.")


@inference_app.command("run")
def inference_run(
    ctx: typer.Context,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (partitions bound parallelism).")] = 1,
    max_batch: Annotated[int | None, typer.Option(min=1, help="Most requests per batch.")] = None,
    max_delay_ms: Annotated[int | None, typer.Option(min=0, help="Wait for more after a batch's first.")] = None,
    guarantee: Annotated[str | None, typer.Option(help="at-least-once (default) or exactly-once.")] = None,
) -> None:
    """Score requests from Kafka with the champion model until SIGTERM/Ctrl-C (the batch in hand finishes)."""
    from streamscore.inference import run_workers
    from streamscore.settings import child_env
    from streamscore.stack.supervisor import run_together

    settings = settings_of(ctx)
    updates = {k: v for k, v in {"max_batch": max_batch, "max_delay_ms": max_delay_ms, "guarantee": guarantee}.items()
               if v is not None}  # fmt: skip
    if guarantee is not None and guarantee not in ("at-least-once", "exactly-once"):
        raise typer.BadParameter("--guarantee must be at-least-once or exactly-once")
    settings = settings.model_copy(update={"inference": settings.inference.model_copy(update=updates)})
    if workers == 1:
        run_workers(settings)
        return
    envs = []
    for i in range(workers):  # each serves metrics on the next free port
        env = child_env(settings)
        if settings.inference.instance_id:  # one name per process: two with the same one would fence each other
            env["STREAMSCORE_INFERENCE__INSTANCE_ID"] = f"{settings.inference.instance_id}-{i}"
        envs.append(env)
    code = run_together(["inference", "run"], envs)
    if code:
        raise typer.Exit(code)
