"""Serving's one way to get a model, so no worker can score with bytes the registry did not vouch for: resolve
an alias, fetch the ONNX file, check its sha256 against the registry, open an ONNX Runtime session."""

from __future__ import annotations

from streamscore.models.registry import CHAMPION, Registry
from streamscore.models.runtime import ScoringSession, open_session
from streamscore.settings import Settings

__all__ = ["load_model"]


def load_model(settings: Settings, alias: str | int = CHAMPION, *, registry: Registry | None = None) -> ScoringSession:
    """The registered model ``alias`` (default the champion) ready to score; ``session.provider`` says
    which execution provider it got. Raises RegistryError, ModelIntegrityError or ModelLoadError."""
    registry = registry or Registry(settings)
    data, info = registry.fetch(alias)
    return open_session(
        data,
        expected_sha256=info.sha256,
        providers=settings.model.providers,
        intra_op_threads=settings.model.intra_op_threads,
        version=str(info.version),
    )
