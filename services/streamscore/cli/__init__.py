"""The `streamscore` command line: one entry point, grouped by noun (`stack`, `topics`, `features`, `models`,
`inference`, `retrain`, ...), each group in a module of its own.

Settings are loaded once, in the root callback, and handed down through the context. Failures a user can fix
(bad configuration, a stack that will not start) print one line on stderr and exit non-zero, never a
traceback. Heavy libraries (Feast, MLflow, ONNX Runtime, faust) are imported inside the commands that need
them, so `--help` and the light commands start fast.

Spellings of the previous release (`backfill`, `train`, `retrain-on-drift`) still work, hidden from `--help`,
with a one-line notice of the new name; they go in the next release.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer

from streamscore.cli import config, demo, feast, features, generate, inference, models, monitor, retrain, stack
from streamscore.cli.output import err_console
from streamscore.errors import StreamscoreError
from streamscore.settings import load_settings

__all__ = ["app", "main"]

_state = {"debug": False}

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Real-time features and scoring on Kafka.",
)


@app.callback()
def _load(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected failure.")] = False,
) -> None:
    import logging

    from rich.logging import RichHandler

    _state["debug"] = debug
    if not _loads_user_definitions(ctx):
        _skip_feast_type_instrumentation()
    settings = load_settings()
    _state["debug"] = debug or settings.log_level == "DEBUG"
    # Rich for people at a terminal; one plain line per record for log collectors (Rich would wrap at 80).
    handler: logging.Handler = (
        RichHandler(console=err_console, show_path=False) if err_console.is_terminal else logging.StreamHandler()
    )
    fmt = "%(name)s: %(message)s" if err_console.is_terminal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=settings.log_level, format=fmt, handlers=[handler])
    for noisy in ("feast", "httpx"):  # httpx logs every request (Prometheus, MLflow) at INFO
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    ctx.obj = settings


def _loads_user_definitions(ctx: typer.Context) -> bool:
    """`features apply` and the `feast` passthrough import the user's definitions file; the rest read the
    registry those wrote."""
    if ctx.invoked_subcommand == "feast":
        return True
    words = [a for a in sys.argv[1:] if not a.startswith("-")]
    return words[:2] == ["features", "apply"]


def _skip_feast_type_instrumentation() -> None:
    """Feast decorates its definition classes with typeguard's ``@typechecked``, which re-parses and
    recompiles their source while ``import feast`` runs: 3 of its 4.5 s on this machine, paid by every service
    start and every command that reads features. The checks guard the arguments of definitions being written;
    a process that only reads them back from the registry gains nothing from them. So the decorator passes
    its target through, as typeguard itself does under ``python -O`` (feast is the only user of typeguard in
    our dependencies). Commands that load the user's definitions keep the checks."""
    if "feast" in sys.modules:
        return
    try:
        import typeguard
    except ImportError:  # a feast without typeguard: nothing to skip
        return

    def passthrough(target: Any = None, **_: Any) -> Any:
        return target if target is not None else passthrough

    typeguard.typechecked = passthrough


for name, group in (("stack", stack.stack_app), ("topics", stack.topics_app), ("config", config.config_app),
                    ("features", features.features_app), ("models", models.models_app),
                    ("inference", inference.inference_app), ("retrain", retrain.retrain_app)):  # fmt: skip
    app.add_typer(group, name=name)
app.command("generate")(generate.generate)
app.command("feast", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(feast.feast_cli)
app.command("top")(monitor.top)
app.command("report")(monitor.report)
app.command("demo")(demo.demo)


def _renamed(command: Callable[..., Any], old: str, new: str) -> Callable[..., Any]:
    @functools.wraps(command)
    def alias(*args: Any, **kwargs: Any) -> Any:
        err_console.print(f"[yellow]`streamscore {old}` is now `streamscore {new}`; the old name goes next release[/]")
        return command(*args, **kwargs)

    return alias


for old, new, command in (("backfill", "features backfill", features.features_backfill),
                          ("train", "models train", models.models_train),
                          ("retrain-on-drift", "retrain run", retrain.retrain_run)):  # fmt: skip
    app.command(old, hidden=True)(_renamed(command, old, new))


def main() -> None:
    """Console-script entry point: every failure is one line on stderr and a non-zero exit (2 for usage and
    configuration, 1 for the rest); the traceback of an unexpected one only with ``--debug`` or
    ``STREAMSCORE_LOG_LEVEL=DEBUG``."""
    try:
        code = app(standalone_mode=False)
    except StreamscoreError as exc:
        kind = "configuration error" if exc.exit_code == 2 else "error"
        _fail(f"[red]{kind}:[/] {exc}", exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _fail("[yellow]interrupted[/]", 130)
    except typer.TyperException as exc:  # click's own errors (typer vendors click): exit 2 marks a usage error
        exit_code = int(getattr(exc, "exit_code", 1))
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if exit_code != 2:
            _fail(f"[red]error:[/] {message}", exit_code)
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path.replace(ctx.find_root().info_name or "", "streamscore", 1) if ctx else "streamscore"
        _fail(f"[red]usage error:[/] {message} (see `{where} --help`)", 2)
    except Exception as exc:
        if _state["debug"]:
            raise
        hint = "run again with --debug for the traceback"
        _fail(f"[red]error:[/] {type(exc).__name__}: {exc} ({hint})", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> NoReturn:
    err_console.print(message, soft_wrap=True, highlight=False)
    sys.exit(code)
