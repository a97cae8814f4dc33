r"""Feast's configuration, built from streamscore's settings instead of read from ``feature_store.yaml``.

Every service builds the same :class:`feast.RepoConfig` from the one :class:`~streamscore.settings.Settings` it was
handed, so the stream processor, the backfill, training and inference agree on the registry file and the Redis
online store without a YAML file per environment. ``feature_repo/feature_store.yaml`` stays for the ``feast``
CLI; :func:`feast_env` fills its ``${FEAST_*}`` variables from the same settings.

>>> from streamscore.settings import Settings
>>> redis_connection_string(Settings(redis={"url": "rediss://cache.internal:6380/2", "password": "p,w"}).redis)
'cache.internal:6380,db=2,password="p\\u002cw",ssl=true'
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlparse

import yaml
from feast import FeatureStore, RepoConfig
from feast.batch_feature_view import BatchFeatureView
from feast.data_source import DataSource, KafkaSource, KinesisSource, PushSource
from feast.entity import Entity
from feast.feature_service import FeatureService
from feast.feature_view import DUMMY_ENTITY, FeatureView
from feast.infra.registry.registry import FEAST_OBJECT_TYPES, FeastObjectType
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.permissions.permission import Permission
from feast.project import Project
from feast.repo_config import RegistryConfig
from feast.repo_contents import RepoContents
from feast.repo_operations import extract_objects_for_apply_delete
from feast.stream_feature_view import StreamFeatureView

from streamscore.resources import feature_repo_dir
from streamscore.settings import ENV_PREFIX, ConfigError, RedisSettings, Settings, settings_env

__all__ = [
    "PROJECT",
    "REGISTRY_CACHE_TTL_S",
    "REPO_PATH",
    "apply_definitions",
    "feast_env",
    "feature_store",
    "quiet_feast",
    "redis_connection_string",
    "registry_path",
    "repo_config",
]

PROJECT = "streamscore"
REPO_PATH: Path = feature_repo_dir()
DEFINITIONS = REPO_PATH / "definitions.py"

# Feast's default keeps registry state for 600 s. Services resolve their views once at start (the online writer)
# or read through the cache on every request (serving), where a refresh is one synchronous re-read of the file
# registry inside that request. A minute bounds how long a service runs on definitions older than the last
# `apply` while keeping that re-read off all but one request a minute.
REGISTRY_CACHE_TTL_S = 60

# `training.offline_store` to Feast's `offline_store: type:`. They differ only in get_historical_features (ours are
# Feast's DuckDB store otherwise), which is why feature_store.yaml, for the CLI, can name one for all.
# Named, not imported: Feast imports the store (and ibis, ~0.4 s) when a RepoConfig is built, not on import here.
OFFLINE_STORE_TYPES = {
    "asof": "streamscore.store.offline.AsofDuckDBOfflineStore",
    "duckdb": "duckdb",
    "spark": "streamscore.store.offline_spark.SparkOfflineStore",
}

_EXPERIMENTAL = r"(Stream|Batch) feature views are experimental"
# ibis (Feast's DuckDB offline store) still calls a DuckDB 2 method that warns; harmless, and not ours to fix.
_IBIS_DUCKDB = r"fetch_arrow_table\(\) is deprecated"


@contextmanager
def quiet_feast() -> Iterator[None]:
    """Silence Feast's "feature views are experimental" RuntimeWarning (and one DeprecationWarning its DuckDB
    offline store raises on every historical read) for the calls inside the block.

    Feast warns every time it builds a StreamFeatureView, which includes every registry read, and our tests run
    with warnings as errors. Scoped rather than global so any other warning still surfaces; like every
    ``warnings.catch_warnings`` it swaps process-wide filters, so do not rely on it from several threads at once.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_EXPERIMENTAL, category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=_IBIS_DUCKDB, category=DeprecationWarning)
        yield


def _param(value: str) -> str:
    """A connection-string value that Feast's parser gives back unchanged.

    Feast splits the string on every comma, then ``json.loads`` each value and keeps it as it was only when
    that fails: a password ``123`` would arrive as an int, ``true`` as a bool and ``null`` as no password at
    all. A JSON string always decodes to itself, and escaping commas as ``\\u002c`` keeps the split intact.
    """
    return json.dumps(value).replace(",", "\\u002c")


def redis_connection_string(redis: RedisSettings) -> str:
    """Feast's ``host:port,db=N[,username=..][,password=..][,ssl=true][,ssl_ca_certs=..]`` for these settings.

    Feast hands the ``key=value`` parameters to ``redis.Redis`` as keyword arguments. The password comes from
    ``redis.password`` or else from the URL.
    """
    if ":" in redis.host:
        # Feast splits each node on ":" into host and port; an IPv6 literal cannot survive that.
        raise ConfigError(f"Feast's Redis connection string cannot hold the IPv6 address {redis.host!r}; use a name")
    parsed = urlparse(redis.url)
    parts = [f"{redis.host}:{redis.port}", f"db={redis.db}"]
    if parsed.username:
        parts.append(f"username={_param(unquote(parsed.username))}")
    password = redis.password.get_secret_value() if redis.password is not None else parsed.password
    if password:
        parts.append(f"password={_param(unquote(password) if redis.password is None else password)}")
    if redis.tls:
        parts.append("ssl=true")
        if redis.ssl_ca_certs is not None:
            parts.append(f"ssl_ca_certs={_param(str(redis.ssl_ca_certs))}")
    return ",".join(parts)


def registry_path(settings: Settings) -> Path:
    """The file registry: one per data directory, next to the rest of a deployment's state."""
    return settings.data_dir / "feast" / "registry.db"


def _offline_store(settings: Settings) -> dict[str, str]:
    kind = settings.training.offline_store
    if kind == "spark":
        return {"type": OFFLINE_STORE_TYPES[kind], "spark_master": settings.features.spark_master}
    return {"type": OFFLINE_STORE_TYPES[kind]}


def repo_config(settings: Settings) -> RepoConfig:
    """The Feast configuration ``feature_repo/feature_store.yaml`` describes, filled from ``settings``."""
    path = registry_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry=RegistryConfig(registry_type="file", path=str(path), cache_ttl_seconds=REGISTRY_CACHE_TTL_S),
        online_store={"type": "redis", "connection_string": redis_connection_string(settings.redis)},
        offline_store=_offline_store(settings),
        entity_key_serialization_version=3,
        repo_path=REPO_PATH,
    )


def feature_store(settings: Settings) -> FeatureStore:
    """A FeatureStore on :func:`repo_config`; no ``feature_store.yaml`` is read and the working directory is
    irrelevant."""
    return FeatureStore(repo_path=str(REPO_PATH), config=repo_config(settings))


def _yaml_safe(name: str, value: str) -> str:
    # Feast pastes ${VAR} into the YAML text before parsing it, so the value must survive as a plain scalar.
    if yaml.safe_load(f"value: {value}") != {"value": value}:
        raise ConfigError(f"{name} cannot be written into feature_store.yaml as it is: {value!r}")
    return value


def feast_env(settings: Settings) -> dict[str, str]:
    """``FEAST_REGISTRY_PATH`` and ``FEAST_REDIS_CONNECTION`` for running the ``feast`` CLI on ``feature_repo/``.

    ``feast apply`` also imports ``definitions.py``, which reads the ``STREAMSCORE_*`` settings from the
    environment (and from a ``.env`` in the directory Feast changes into): add
    :func:`~streamscore.settings.settings_env` when the CLI must see exactly these settings.
    """
    path = registry_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    return {
        "FEAST_REGISTRY_PATH": _yaml_safe("FEAST_REGISTRY_PATH", str(path)),
        "FEAST_REDIS_CONNECTION": _yaml_safe("FEAST_REDIS_CONNECTION", redis_connection_string(settings.redis)),
    }


@contextmanager
def _streamscore_environ(env: dict[str, str]) -> Iterator[None]:
    """Replace every ``STREAMSCORE_*`` variable by ``env`` for the block, then put the old ones back."""
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
    for name in saved:
        del os.environ[name]
    os.environ.update(env)
    try:
        yield
    finally:
        for name in env:
            os.environ.pop(name, None)
        os.environ.update(saved)


def _load_definitions(settings: Settings) -> ModuleType:
    """Execute ``definitions.py`` afresh, its ``load_settings()`` seeing exactly ``settings``.

    ``definitions.py`` is the Feast repo the ``feast`` CLI reads too, so it gets its settings the way any
    process does, from ``STREAMSCORE_*`` variables; here those are set from ``settings`` for the duration of the
    import (others removed meanwhile). A fresh module under a private name each time, never ``sys.modules``'s
    cached copy, so a second call with other settings gets other paths. The module's ``_SETTINGS`` is then
    checked against ``settings``: a value from a ``.env`` file, or a setting the environment cannot carry,
    must fail loudly rather than register the wrong paths.
    """
    name = f"_streamscore_feature_repo_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, DEFINITIONS)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load the Feast definitions at {DEFINITIONS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a module up by name while it executes
    try:
        with _streamscore_environ(settings_env(settings)), quiet_feast():
            spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    seen = getattr(module, "_SETTINGS", settings)
    if seen != settings:
        raise ConfigError(
            f"{DEFINITIONS} was imported with other settings than the ones given (a .env file in {Path.cwd()}?)"
        )
    return module


def _add(items: list[Any], obj: Any) -> None:
    if obj is not None and not any(obj is seen for seen in items):
        items.append(obj)


def _repo_contents(module: ModuleType) -> RepoContents:
    """The Feast objects of one module, sorted the way ``feast.repo_operations.parse_repo`` sorts a repo's
    (which only imports from the working directory, and only once per process)."""
    repo = RepoContents(
        projects=[],
        data_sources=[],
        feature_views=[],
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        entities=[],
        feature_services=[],
        permissions=[],
    )
    for attr in dir(module):
        obj = getattr(module, attr)
        if isinstance(obj, DataSource):
            _add(repo.data_sources, obj)
            if isinstance(obj, PushSource | KafkaSource | KinesisSource):
                _add(repo.data_sources, obj.batch_source)
        elif isinstance(obj, StreamFeatureView):
            _add(repo.stream_feature_views, obj)
            _add(repo.data_sources, obj.batch_source)
            _add(repo.data_sources, obj.stream_source)
        elif isinstance(obj, FeatureView | BatchFeatureView):
            _add(repo.feature_views, obj)
            _add(repo.data_sources, obj.batch_source)
            _add(repo.data_sources, obj.stream_source)
        elif isinstance(obj, OnDemandFeatureView):
            _add(repo.on_demand_feature_views, obj)
        elif isinstance(obj, Entity):
            _add(repo.entities, obj)
        elif isinstance(obj, FeatureService):
            _add(repo.feature_services, obj)
        elif isinstance(obj, Permission):
            _add(repo.permissions, obj)
        elif isinstance(obj, Project):
            _add(repo.projects, obj)
    if not repo.projects:
        repo.projects.append(Project(name=PROJECT, description=""))
    elif [p.name for p in repo.projects] != [PROJECT]:
        raise ConfigError(f"{DEFINITIONS} must define no Project or only {PROJECT!r}")
    repo.entities.append(DUMMY_ENTITY)  # Feast's placeholder for entity-less views; `feast apply` adds it too
    return repo


def apply_definitions(settings: Settings) -> list[str]:
    """``feast apply`` of ``feature_repo/definitions.py`` against the registry and Redis of ``settings``.

    Like the CLI it registers every object the module defines and deletes registered objects of the project
    that the module no longer defines (with their online data). Applying unchanged definitions changes nothing
    a reader can see, so calling this at every deploy is safe; calling it from several processes at once is
    not (the file registry is rewritten whole, last writer wins). Returns the names of the objects applied,
    grouped by kind in Feast's order (project, data sources, entities, views, feature services, ...).
    """
    module = _load_definitions(settings)
    store = feature_store(settings)
    with quiet_feast():
        repo = _repo_contents(module)
        # Feast's own diff of registry and repo, as `feast apply` computes it (Feast leaves it unannotated).
        to_apply, to_delete, _, _ = extract_objects_for_apply_delete(  # type: ignore[no-untyped-call]
            PROJECT, store.registry, repo
        )
        store.apply(to_apply, objects_to_delete=to_delete, partial=False)
    applied = {id(obj) for obj in to_apply}
    by_kind = FeastObjectType.get_objects_from_repo_contents(repo)
    return [
        obj.name
        for kind in FEAST_OBJECT_TYPES
        for obj in sorted(by_kind[kind], key=lambda o: str(o.name))
        if id(obj) in applied and obj is not DUMMY_ENTITY
    ]
