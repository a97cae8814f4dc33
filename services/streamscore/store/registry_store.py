"""The registry store `feature_repo/feature_store.yaml` names: Feast's file store that refuses an unset path.

The YAML takes the registry path from ``${FEAST_REGISTRY_PATH}``; Feast expands it with
``os.path.expandvars``, which leaves an unset variable as it is, so ``feast -c feature_repo apply`` without it
quietly created a file literally named ``feature_repo/${FEAST_REGISTRY_PATH}``. Feast builds the registry
store for every command that touches the registry, which makes this the one place that sees them all.
"""

from __future__ import annotations

import os
from pathlib import Path

from feast.infra.registry.file import FileRegistryStore
from feast.repo_config import RegistryConfig

__all__ = ["UNSET_MESSAGE", "CheckedFileRegistryStore"]

_VARIABLES = ("FEAST_REGISTRY_PATH", "FEAST_REDIS_CONNECTION")
UNSET_MESSAGE = (
    "{names} not set: feature_repo/feature_store.yaml reads the registry and Redis from them; run "
    '`eval "$(streamscore feast env)"` first, or use `streamscore feast ...`, which sets them from the settings'
)


class CheckedFileRegistryStore(FileRegistryStore):
    def __init__(self, registry_config: RegistryConfig, repo_path: Path) -> None:
        unset = [name for name in _VARIABLES if not os.environ.get(name)]
        if unset or "${" in str(registry_config.path):
            # SystemExit: Feast's CLI would print any other exception as a traceback.
            raise SystemExit(UNSET_MESSAGE.format(names=" and ".join(unset or ["FEAST_REGISTRY_PATH"])))
        super().__init__(registry_config, repo_path)
