"""The model registry on MLflow: candidates in, one champion out, every version traceable to its bytes.

Each trained candidate is one MLflow run holding ``model/`` (``model.onnx``, ``card.json``, ``profile.json``,
``gate_report.json``) and one version of the registered model ``settings.model.name`` whose source is that
directory. The version's tags carry what a reader needs without downloading anything: the file's SHA-256 (checked
again on every :meth:`Registry.fetch`), the model kind, the training window and ``feast.feature_service``, the
tag Feast's own MLflow integration reads to tie a model to its FeatureService (:func:`feast_lineage`).

Aliases say what runs where: ``challenger`` is the latest candidate, ``champion`` the one serving. Promotions
are recorded in the registered model's ``streamscore.champion_history`` tag so a bad promotion can be undone
with :meth:`Registry.rollback`.

Where MLflow lives and how it is reached (explicit URIs, sqlite under ``data_dir/mlflow`` by default, one-line
errors) is :mod:`streamscore.models.tracking`'s, shared with the retrain history; this module holds only what
versions, aliases and promotions mean.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from streamscore.models.card import ModelCard
from streamscore.models.runtime import ModelIntegrityError, sha256_hex
from streamscore.models.tracking import RegistryError, Tracking, already_exists, moment, not_found
from streamscore.settings import Settings

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Registry",
    "RegistryError",
    "VersionInfo",
    "feast_lineage",
]

CHALLENGER: Final = "challenger"
CHAMPION: Final = "champion"
ARTIFACT_DIR: Final = "model"
MODEL_FILE: Final = "model.onnx"

TAG_SHA256: Final = "streamscore.sha256"
TAG_KIND: Final = "streamscore.kind"
TAG_DATA_START: Final = "streamscore.data_start"
TAG_DATA_END: Final = "streamscore.data_end"
TAG_TEST_START: Final = "streamscore.test_start"  # the window the version's test metrics were measured on
TAG_TEST_END: Final = "streamscore.test_end"
TAG_PROMOTED_AT: Final = "streamscore.promoted_at"
TAG_PROMOTE_REASON: Final = "streamscore.promote_reason"
TAG_ROLLED_BACK_AT: Final = "streamscore.rolled_back_at"
TAG_HISTORY: Final = "streamscore.champion_history"
TAG_FEATURE_SERVICE: Final = "feast.feature_service"  # read by feast.mlflow_integration.model_resolver


@dataclass(frozen=True)
class VersionInfo:
    """One registered model version as ``streamscore models list/show`` prints it."""

    version: int
    aliases: tuple[str, ...]
    sha256: str
    artifact_uri: str  # the version's source: the run's ``model/`` directory
    run_id: str
    kind: str
    feature_service: str
    data_start: str
    data_end: str
    test_start: str  # the window of its test metrics; empty for versions registered before it was recorded
    test_end: str
    metrics: dict[str, float]
    created_at: str  # ISO 8601 UTC
    promoted: bool  # is champion now, or was promoted at some point

    @property
    def is_champion(self) -> bool:
        return CHAMPION in self.aliases

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``--json``): tuples become lists."""
        data = asdict(self)
        data["aliases"] = list(self.aliases)
        return data


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds")


def _now_iso() -> str:
    return _iso(datetime.now(tz=UTC))


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, indent=2)


class Registry:
    """Candidates, promotions and verified downloads for the model ``settings.model.name``.

    Cheap to build: the MLflow client (and, the first time on a data directory, the sqlite schema migration,
    about a second) is created on first use. Several ``Registry`` objects, in one process or several, on the
    same data directory or server see the same state; promotions are operator actions and are not guarded
    against two running at the same instant (the history tag is last-writer-wins).

    >>> from pathlib import Path
    >>> r = Registry(Settings(data_dir=Path("/srv/streamscore")))
    >>> r.tracking_uri, r.name
    ('sqlite:////srv/streamscore/mlflow/mlflow.db', 'fraud-detector')
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.model.name
        self.tracking = Tracking(settings)

    @property
    def tracking_uri(self) -> str:
        """Where runs and the model registry live."""
        return self.tracking.uri

    @property
    def _client(self) -> mlflow.MlflowClient:
        return self.tracking.client

    # -- the registered model in MLflow -----------------------------------------------------------------------

    def _ensure_registered_model(self) -> None:
        client = self._client
        with self.tracking.errors(f"register model {self.name!r}"):
            try:
                client.get_registered_model(self.name)
            except MlflowException as exc:
                if not not_found(exc):
                    raise
                try:
                    client.create_registered_model(self.name)
                except MlflowException as again:
                    if not already_exists(again):  # another process won the race
                        raise

    def _registered_model(self) -> Any:
        try:
            return self._client.get_registered_model(self.name)
        except MlflowException as exc:
            if not_found(exc):
                raise RegistryError(f"no model named {self.name!r} is registered yet (train one first)") from None
            raise RegistryError(f"cannot read model {self.name!r} (MLflow at {self.tracking.uri}): {exc}") from exc

    def _model_version(self, version_or_alias: str | int) -> Any:
        """MLflow's ModelVersion for a version number (int or digits) or an alias; RegistryError if unknown."""
        self._registered_model()  # a clear "nothing registered" before "unknown version"
        key = str(version_or_alias).strip()
        client = self._client
        try:
            if key.isdigit():
                return client.get_model_version(self.name, key)
            return client.get_model_version_by_alias(self.name, key)
        except MlflowException as exc:
            if not_found(exc) or exc.error_code == "INVALID_PARAMETER_VALUE":
                what = f"version {key}" if key.isdigit() else f"alias {key!r}"
                raise RegistryError(f"model {self.name!r} has no {what}") from None
            raise RegistryError(f"cannot read model {self.name!r} {key} (MLflow): {exc.message}") from exc

    def _info(self, mv: Any, aliases: Iterable[str] | None = None) -> VersionInfo:
        """A VersionInfo from MLflow's ModelVersion; ``aliases`` where the ModelVersion lacks them (search)."""
        tags: dict[str, str] = dict(mv.tags or {})
        alias_tuple = tuple(sorted(mv.aliases or [] if aliases is None else aliases))
        metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                metrics = {k: float(v) for k, v in self._client.get_run(mv.run_id).data.metrics.items()}
            except MlflowException:
                metrics = {}  # run deleted or registered from elsewhere: the version is still listable
        return VersionInfo(
            version=int(mv.version),
            aliases=alias_tuple,
            sha256=tags.get(TAG_SHA256, ""),
            artifact_uri=str(mv.source or ""),
            run_id=str(mv.run_id or ""),
            kind=tags.get(TAG_KIND, ""),
            feature_service=tags.get(TAG_FEATURE_SERVICE, ""),
            data_start=tags.get(TAG_DATA_START, ""),
            data_end=tags.get(TAG_DATA_END, ""),
            test_start=tags.get(TAG_TEST_START, ""),
            test_end=tags.get(TAG_TEST_END, ""),
            metrics=metrics,
            created_at="" if mv.creation_timestamp is None else _iso(moment(mv.creation_timestamp)),
            promoted=CHAMPION in alias_tuple or TAG_PROMOTED_AT in tags,
        )

    def _is_registered(self) -> bool:
        client = self._client
        found = self.tracking.call(
            "look up the model", lambda: client.search_registered_models(filter_string=f"name = '{self.name}'")
        )
        return len(found) > 0

    def _champion_version(self) -> int | None:
        version = (self._registered_model().aliases or {}).get(CHAMPION)
        return None if version is None else int(version)

    def _history(self) -> list[int]:
        raw = (self._registered_model().tags or {}).get(TAG_HISTORY)
        if not raw:
            return []
        try:
            history = json.loads(raw)
            return [int(v) for v in history]
        except (ValueError, TypeError) as exc:
            raise RegistryError(f"model {self.name!r} has a malformed {TAG_HISTORY} tag: {raw!r}") from exc

    def _set_history(self, history: list[int]) -> None:
        self.tracking.call(
            "record the champion history",
            lambda: self._client.set_registered_model_tag(self.name, TAG_HISTORY, json.dumps(history)),
        )

    def _reconciled_history(self) -> list[int]:
        """The history with the live champion alias as its last entry.

        The alias is the truth (it is what serving loads); the history is our record of promotions. If someone
        moved ``champion`` by hand (MLflow UI, another tool) the alias's version is appended, so a rollback
        returns to the hand-set champion's predecessor in the record, never past a version that really served.
        """
        history = self._history()
        current = self._champion_version()
        if current is not None and (not history or history[-1] != current):
            history.append(current)
        return history

    def _download(self, mv: Any, name: str, dst: str) -> Path:
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise RegistryError(f"not an artifact file name: {name!r}")
        try:
            return self.tracking.download(f"{str(mv.source).rstrip('/')}/{name}", dst)
        except (MlflowException, OSError) as exc:
            raise RegistryError(f"model {self.name!r} version {mv.version} has no readable {name}: {exc}") from exc

    # -- writing ----------------------------------------------------------------------------------------------

    def start_run(self, run_name: str, tags: dict[str, str] | None = None) -> AbstractContextManager[str]:
        """An MLflow run in the model's experiment, yielding its id; ended FINISHED, or FAILED on an exception.

        No active-run global is set: pass the id to :meth:`log_candidate`.
        """
        return self.tracking.start_run(run_name, tags)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Tags on a run of this model's experiment (what a decision concluded, after it started)."""
        self.tracking.set_tags(run_id, tags)

    def runs(self, tags: dict[str, str], *, max_results: int = 1000) -> list[Any]:
        """The newest ``max_results`` runs of this model's experiment carrying every given tag value, oldest first."""
        return self.tracking.runs(tags, max_results=max_results)

    def log_candidate(
        self,
        run_id: str,
        *,
        onnx_bytes: bytes,
        card: ModelCard,
        profile: dict[str, Any],
        report: dict[str, Any],
        params: dict[str, str | int | float],
        metrics: dict[str, float],
    ) -> VersionInfo:
        """Store one trained model in ``run_id`` and register it as a new version aliased ``challenger``.

        The version is created only once every artifact is stored and the model file's listed size matches:
        a failed upload leaves a run with partial artifacts but never a version pointing at them.
        """
        client = self._client
        sha = sha256_hex(onnx_bytes)
        timestamp = int(datetime.now(tz=UTC).timestamp() * 1000)
        with self.tracking.errors(f"log params and metrics to run {run_id}"):
            client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), timestamp, 0) for k, v in sorted(metrics.items())],
                params=[Param(k, str(v)) for k, v in sorted(params.items())],
                tags=[RunTag(TAG_SHA256, sha), RunTag(TAG_FEATURE_SERVICE, card.feature_service)],
            )
        with tempfile.TemporaryDirectory(prefix="streamscore-model-") as tmp:
            folder = Path(tmp)
            (folder / MODEL_FILE).write_bytes(onnx_bytes)
            (folder / "card.json").write_text(_dumps(json.loads(card.to_json())))
            (folder / "profile.json").write_text(_dumps(profile))
            (folder / "gate_report.json").write_text(_dumps(report))
            try:
                client.log_artifacts(run_id, tmp, artifact_path=ARTIFACT_DIR)
                stored = {f.path.rsplit("/", 1)[-1]: f.file_size for f in client.list_artifacts(run_id, ARTIFACT_DIR)}
            except (MlflowException, OSError) as exc:
                raise RegistryError(
                    f"cannot store the model artifacts of run {run_id}; nothing registered: {exc}"
                ) from exc
        if stored.get(MODEL_FILE) != len(onnx_bytes):
            raise RegistryError(
                f"run {run_id}: {MODEL_FILE} stored with {stored.get(MODEL_FILE)} bytes, expected {len(onnx_bytes)};"
                " nothing registered"
            )
        run = self.tracking.call("read the run", lambda: client.get_run(run_id))
        self._ensure_registered_model()
        version_tags = {
            TAG_SHA256: sha,
            TAG_KIND: card.kind,
            TAG_DATA_START: card.data_start,
            TAG_DATA_END: card.data_end,
            TAG_FEATURE_SERVICE: card.feature_service,
        }
        if "test" in card.windows:
            version_tags[TAG_TEST_START], version_tags[TAG_TEST_END] = card.windows["test"]
        with self.tracking.errors(f"register a version of {self.name!r}"):
            mv = client.create_model_version(
                self.name,
                source=f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_DIR}",
                run_id=run_id,
                tags=version_tags,
            )
            client.set_registered_model_alias(self.name, CHALLENGER, str(mv.version))
        return self.get(int(mv.version))

    def promote(self, version: int, *, reason: str) -> VersionInfo:
        """Make ``version`` the champion and record it, so :meth:`rollback` can return to the one before.

        The alias moves first and the history tag second: if the second write fails, the next promote or
        rollback reconciles the history with the alias (see ``_reconciled_history``). Promoting the current
        champion changes nothing.
        """
        mv = self._model_version(int(version))
        number = int(mv.version)
        if self._champion_version() == number and TAG_PROMOTED_AT in (mv.tags or {}):
            return self.get(number)
        history = self._reconciled_history()
        client = self._client
        with self.tracking.errors(f"promote version {number}"):
            client.set_model_version_tag(self.name, str(number), TAG_PROMOTED_AT, _now_iso())
            client.set_model_version_tag(self.name, str(number), TAG_PROMOTE_REASON, reason)
            client.set_registered_model_alias(self.name, CHAMPION, str(number))
        if not history or history[-1] != number:
            history.append(number)
        self._set_history(history)
        return self.get(number)

    def rollback(self) -> VersionInfo:
        """Give ``champion`` back to the previous champion in the history and drop the current one from it.

        Versions deleted since they were champion are skipped. With no earlier champion, nothing changes and
        RegistryError says so.
        """
        current = self._champion_version()
        if current is None:
            raise RegistryError(f"model {self.name!r} has no champion to roll back from")
        history = self._reconciled_history()
        history.pop()
        while history and not self._exists(history[-1]):
            history.pop()
        if not history:
            raise RegistryError(f"model {self.name!r} has no earlier champion than version {current} to roll back to")
        previous = history[-1]
        client = self._client
        with self.tracking.errors(f"roll back to version {previous}"):
            client.set_registered_model_alias(self.name, CHAMPION, str(previous))
            client.set_model_version_tag(self.name, str(current), TAG_ROLLED_BACK_AT, _now_iso())
        self._set_history(history)
        return self.get(previous)

    def _exists(self, version: int) -> bool:
        try:
            self._client.get_model_version(self.name, str(version))
        except MlflowException as exc:
            if not_found(exc):
                return False
            raise RegistryError(f"cannot read version {version} of {self.name!r}: {exc.message}") from exc
        return True

    # -- reading ----------------------------------------------------------------------------------------------

    def champion(self) -> VersionInfo | None:
        """The serving version, or None when nothing was promoted (or nothing is registered)."""
        if not self._is_registered():
            return None
        current = self._champion_version()
        return None if current is None else self.get(current)

    def get(self, version_or_alias: str | int) -> VersionInfo:
        """One version by number (``3``, ``"3"``) or alias (``"champion"``)."""
        return self._info(self._model_version(version_or_alias))

    def versions(self) -> list[VersionInfo]:
        """Every version, newest first; empty when nothing is registered."""
        if not self._is_registered():
            return []
        client = self._client
        query = f"name = '{self.name}'"
        found: list[Any] = []
        token: str | None = None
        while True:
            page = self.tracking.call("list versions", partial(client.search_model_versions, query, page_token=token))
            found.extend(page)
            token = page.token
            if not token:
                break
        aliases: dict[int, list[str]] = {}
        for alias, number in (self._registered_model().aliases or {}).items():
            aliases.setdefault(int(number), []).append(alias)  # search results leave ModelVersion.aliases empty
        newest_first = sorted(found, key=lambda mv: int(mv.version), reverse=True)
        return [self._info(mv, aliases.get(int(mv.version), [])) for mv in newest_first]

    def fetch(self, version_or_alias: str | int) -> tuple[bytes, VersionInfo]:
        """The model file's bytes, verified against the SHA-256 recorded at registration."""
        mv = self._model_version(version_or_alias)
        info = self._info(mv)
        with tempfile.TemporaryDirectory(prefix="streamscore-fetch-") as tmp:
            data = self._download(mv, MODEL_FILE, tmp).read_bytes()
        if not info.sha256:
            raise ModelIntegrityError(f"model {self.name!r} version {info.version} has no {TAG_SHA256} tag to verify")
        actual = sha256_hex(data)
        if actual != info.sha256:
            raise ModelIntegrityError(
                f"model {self.name!r} version {info.version}: {MODEL_FILE} has SHA-256 {actual[:12]}..., "
                f"registered {info.sha256[:12]}... (corrupted or replaced in the artifact store)"
            )
        return data, info

    def read_json(self, version_or_alias: str | int, name: str) -> dict[str, Any]:
        """One JSON artifact of a version's ``model/`` directory (``card.json``, ``profile.json``, ...)."""
        mv = self._model_version(version_or_alias)
        with tempfile.TemporaryDirectory(prefix="streamscore-fetch-") as tmp:
            text = self._download(mv, name, tmp).read_text()
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise RegistryError(f"{name} of {self.name!r} version {mv.version} is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise RegistryError(f"{name} of {self.name!r} version {mv.version} is not a JSON object")
        return payload


def feast_lineage(settings: Settings, version_or_alias: str | int) -> str:
    """The FeatureService a registered version reads, as Feast's own MLflow resolver answers it.

    Feast reads the version's ``feast.feature_service`` tag (or its run's) and checks that the service exists in
    the Feast registry of ``settings``; a model whose features Feast no longer serves fails here. Feast's
    client takes the registry URI from ``MLFLOW_REGISTRY_URI`` when that is set, else from the tracking URI.
    """
    from feast import FeatureStore
    from feast.mlflow_integration.config import MlflowConfig
    from feast.mlflow_integration.model_resolver import FeastMlflowModelResolutionError

    # Feast costs seconds to import; only lineage needs it, not `models list` or a scorer's fetch.
    from streamscore.store.config import REPO_PATH, quiet_feast, repo_config

    registry = Registry(settings)
    registry.get(version_or_alias)  # our one-line errors for an unknown model, version or alias, or no server
    config = repo_config(settings).model_copy(
        update={"mlflow_config": MlflowConfig(enabled=True, tracking_uri=registry.tracking_uri, auto_log=False)}
    )
    store = FeatureStore(repo_path=str(REPO_PATH), config=config)
    client = store.mlflow
    if client is None:
        raise RegistryError("Feast's MLflow integration is unavailable (is mlflow installed?)")
    try:
        with quiet_feast():
            name: str = client.resolve_features(f"models:/{settings.model.name}/{version_or_alias}")
    except FeastMlflowModelResolutionError as exc:
        raise RegistryError(f"Feast cannot resolve {settings.model.name} {version_or_alias}: {exc}") from None
    return name
