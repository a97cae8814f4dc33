"""MLflow reached one way, shared by the model registry and the retrain history so neither repeats it.

MLflow's defaults suit a notebook, not a service, and each of these is decided here once:

* Where: a process-wide tracking URI and ``./mlruns`` or ``./mlflow.db`` in the working directory. The client is
  always built with explicit URIs (``settings.model.tracking_uri``, or an sqlite database and an artifact
  directory under ``data_dir/mlflow`` so a laptop needs no server) and MLflow's global URI is never read or set.
* How long: MLflow retries a refused connection for about four minutes; a server is probed first, in seconds.
* How it fails: MLflow's exceptions are multi-line and carry server internals; every one becomes one
  :class:`RegistryError` line the CLI can print.
* How loud: schema-migration logs and download progress bars would interleave with our rich output. They are
  turned down when the first client is created, never at import, so importing streamscore leaves a host
  program's logging and environment as they were.

Runs live in one experiment named like the model (``settings.model.name``): the candidates and the retrain
decisions that produced them sit side by side.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlparse

import httpx
import mlflow
from mlflow.exceptions import MlflowException

from streamscore.errors import StreamscoreError
from streamscore.settings import Settings

__all__ = ["RegistryError", "Tracking", "already_exists", "moment", "not_found"]

_logger = logging.getLogger(__name__)
_PROBE_TIMEOUT_S: Final = 5.0
_NOLOAD_DEPRECATION: Final = r"The ``noload`` loader strategy is deprecated"
# MLflow logs every schema migration step of a fresh sqlite database at INFO, alembic each revision; neither is
# actionable for a user.
_NOISY_LOGGERS: Final = ("mlflow.store.db.utils", "alembic")
_T = TypeVar("_T")


class RegistryError(StreamscoreError):
    """MLflow cannot do what was asked: no server, unknown version or alias, nothing to roll back to."""


def not_found(exc: MlflowException) -> bool:
    """MLflow's answer for a missing experiment, model, version or alias (an error code, not an exception type)."""
    return str(exc.error_code) == "RESOURCE_DOES_NOT_EXIST"


def already_exists(exc: MlflowException) -> bool:
    """MLflow's answer when another process created the same thing first: a lost race, not a failure."""
    return str(exc.error_code) == "RESOURCE_ALREADY_EXISTS"


def moment(millis: int) -> datetime:
    """An MLflow timestamp (run start and end, version creation: epoch milliseconds) as an aware UTC datetime.

    >>> moment(1_767_225_600_000).isoformat()
    '2026-01-01T00:00:00+00:00'
    """
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


@cache
def _quiet_mlflow() -> None:
    """Once per process, before the first client: MLflow's console noise down, MLflow's own warnings kept."""
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # A tqdm "Downloading artifacts" bar on stderr for every one-file fetch. MLflow reads this variable on each
    # download; a user who sets it keeps their choice.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _is_http(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


class Tracking:
    """The MLflow tracking server (also the model registry: the two are never split here) of ``settings``.

    Cheap to build: the client (and, the first time on a data directory, the sqlite schema migration, about a
    second) is created on first use. MLflow clients are not shared across threads: build one ``Tracking`` per
    thread.

    >>> from pathlib import Path
    >>> t = Tracking(Settings(data_dir=Path("/srv/streamscore")))
    >>> t.uri, t.experiment
    ('sqlite:////srv/streamscore/mlflow/mlflow.db', 'fraud-detector')
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.experiment = settings.model.name
        if settings.model.tracking_uri is None:
            # Absolute now, so a later chdir cannot move the database under a relative data_dir.
            root = Path(os.path.abspath(settings.data_dir)) / "mlflow"
            self._uri = f"sqlite:///{root / 'mlflow.db'}"
            self._artifact_location: str | None = (root / "artifacts").as_uri()
            self._local_root: Path | None = root
        else:
            self._uri = settings.model.tracking_uri
            self._artifact_location = None  # the server decides where artifacts go
            self._local_root = None

    @property
    def uri(self) -> str:
        """Where runs and registered models live."""
        return self._uri

    @cached_property
    def client(self) -> mlflow.MlflowClient:
        """The MLflow client, created on first use; RegistryError if the store cannot be opened."""
        _quiet_mlflow()
        if self._local_root is not None:
            self._local_root.mkdir(parents=True, exist_ok=True)
        elif _is_http(self._uri):
            self._probe()
        with self.errors("open the registry"), warnings.catch_warnings():
            # MLflow's sqlalchemy store configures its ORM mappers with a loader option SQLAlchemy 2 deprecates;
            # it is MLflow's to fix and says nothing to our users. Ignored for this call only, by its message.
            warnings.filterwarnings("ignore", message=_NOLOAD_DEPRECATION, category=DeprecationWarning)
            client = mlflow.MlflowClient(tracking_uri=self._uri, registry_uri=self._uri)
            # Both stores are built lazily; touch them now so a broken database or schema fails here, once
            # (the first use of a data directory runs MLflow's schema migrations, about a second).
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
        return client

    def _probe(self) -> None:
        """Fail in seconds when the tracking server does not answer at all.

        MLflow retries a refused connection with exponential backoff for about four minutes before giving up.
        Any HTTP answer (even 401 or 404 from a proxy) counts as reachable; TLS is not verified because nothing
        but this unauthenticated ``GET /health`` is sent, and MLflow's own requests verify as configured.
        """
        try:
            httpx.get(f"{self._uri.rstrip('/')}/health", timeout=_PROBE_TIMEOUT_S, verify=False)
        except httpx.TransportError as exc:
            raise RegistryError(
                f"cannot reach the MLflow tracking server at {self._uri}: {exc or type(exc).__name__}"
            ) from None

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """MLflow's exceptions (multi-line, server internals) as one RegistryError line the CLI can print."""
        try:
            yield
        except MlflowException as exc:
            first = str(exc.message).strip().splitlines()[0] if str(exc.message).strip() else exc.error_code
            raise RegistryError(f"cannot {doing} (MLflow at {self._uri}): {first}") from exc

    def call(self, doing: str, fn: Callable[[], _T]) -> _T:
        """``fn()`` under :meth:`errors`."""
        with self.errors(doing):
            return fn()

    def experiment_id(self) -> str:
        """The experiment named like the model, created (or restored from MLflow's trash) on first use."""
        client = self.client
        with self.errors(f"open experiment {self.experiment!r}"):
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is None:
                try:
                    return str(client.create_experiment(self.experiment, artifact_location=self._artifact_location))
                except MlflowException as exc:
                    if not already_exists(exc):
                        raise
                    experiment = client.get_experiment_by_name(self.experiment)
                    if experiment is None:
                        raise
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            return str(experiment.experiment_id)

    @contextmanager
    def start_run(self, run_name: str, tags: dict[str, str] | None = None) -> Iterator[str]:
        """A run in the experiment, yielding its id; ended FINISHED, or FAILED on an exception.

        No active-run global is set: callers pass the id on.
        """
        experiment_id = self.experiment_id()
        client = self.client
        run = self.call("start a run", lambda: client.create_run(experiment_id, run_name=run_name, tags=tags or {}))
        run_id: str = run.info.run_id
        try:
            yield run_id
        except BaseException:
            try:
                client.set_terminated(run_id, status="FAILED")
            except MlflowException:  # keep the original error; a run left RUNNING is only cosmetic
                _logger.warning("could not mark run %s as FAILED", run_id, exc_info=True)
            raise
        self.call("end the run", lambda: client.set_terminated(run_id, status="FINISHED"))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Tags on a run (what a decision concluded, after it started)."""
        client = self.client
        with self.errors(f"tag run {run_id}"):
            for key, value in tags.items():
                client.set_tag(run_id, key, value)

    def runs(self, tags: dict[str, str], *, max_results: int = 1000) -> list[Any]:
        """The newest ``max_results`` runs of the experiment carrying every given tag value, oldest first."""
        experiment_id = self.experiment_id()
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = self.call(
            "search runs",
            lambda: self.client.search_runs(
                [experiment_id], filter_string=query, max_results=max_results, order_by=["attributes.start_time DESC"]
            ),
        )
        return list(reversed(found))

    def download(self, artifact_uri: str, dst: str) -> Path:
        """One artifact into the directory ``dst``; MLflow's and the file system's errors are the caller's to word."""
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri, dst_path=dst, tracking_uri=self._uri, registry_uri=self._uri
        )
        return Path(path)
