"""`streamscore feast ...`: Feast's own CLI on the feature repository, configured from the settings.

``feature_repo/feature_store.yaml`` takes the registry path and the Redis connection from
``${FEAST_REGISTRY_PATH}`` and ``${FEAST_REDIS_CONNECTION}`` (Feast expands them from the environment), so the
same file serves every deployment. ``streamscore feast env`` prints those exports for teams that read features
with Feast's SDK or ``feast serve`` directly.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

import typer

from streamscore.cli.output import settings_of

__all__ = ["feast_cli"]

# Feast's module, not its `feast` script (an image or a venv may hold the package without its scripts dir).
# Feast warns that stream feature views are alpha on every registry read, which is no news about our own
# views; its modules install their own warning filters on import, so ours goes in after them.
_FEAST_QUIET = (
    "import warnings; from feast.cli.cli import cli; "
    "warnings.filterwarnings('ignore', 'Stream feature views are experimental', RuntimeWarning); "
    "cli(prog_name='streamscore feast')"
)


def feast_cli(ctx: typer.Context) -> None:
    """Feast's own CLI on feature_repo/, configured from the STREAMSCORE_* settings, e.g. `streamscore feast
    feature-services list` or `streamscore feast stream-feature-views list` (the views are stream feature
    views). Feast's own help: `streamscore feast -- --help`. `streamscore feast env` prints the FEAST_* exports
    for Feast's SDK or `feast serve` (use with eval)."""
    from streamscore.settings import child_env
    from streamscore.store import REPO_PATH, feast_env

    settings = settings_of(ctx)
    if ctx.args == ["env"]:  # Feast has no `env` command: ours, for `eval "$(streamscore feast env)"`
        for name, value in feast_env(settings).items():
            sys.stdout.write(f"export {name}={shlex.quote(value)}\n")
        return
    env = child_env(settings) | feast_env(settings)
    command = [sys.executable, "-c", _FEAST_QUIET, "-c", str(REPO_PATH), *ctx.args]
    raise typer.Exit(subprocess.run(command, env=env, check=False).returncode)
