"""Trained models as the rest of the system sees them: an ONNX file, its card, and the registry entry.

A model is exported to ONNX with its :class:`ModelCard` inside (:func:`export_onnx`), proven equal to its
source model (:func:`check_equivalence`), registered in MLflow with its sha256 and reference profile
(:class:`Registry`), and served from a :class:`ScoringSession` that refuses a file whose hash does not
match (:func:`load_model`). Pickles are never loaded: the ONNX file is the whole model.
"""

from streamscore.models.card import CARD_KEY, INPUT_NAME, OUTPUT_NAME, CardError, ModelCard
from streamscore.models.loader import load_model
from streamscore.models.onnx_export import EquivalenceError, check_equivalence, export_onnx, source_scores
from streamscore.models.profile import build_profile
from streamscore.models.registry import CHALLENGER, CHAMPION, Registry, RegistryError, VersionInfo, feast_lineage
from streamscore.models.runtime import (
    ModelIntegrityError,
    ModelLoadError,
    ScoringSession,
    open_session,
    resolve_providers,
    sha256_hex,
)

__all__ = [
    "CARD_KEY",
    "CHALLENGER",
    "CHAMPION",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "CardError",
    "EquivalenceError",
    "ModelCard",
    "ModelIntegrityError",
    "ModelLoadError",
    "Registry",
    "RegistryError",
    "ScoringSession",
    "VersionInfo",
    "build_profile",
    "check_equivalence",
    "export_onnx",
    "feast_lineage",
    "load_model",
    "open_session",
    "resolve_providers",
    "sha256_hex",
    "source_scores",
]
