"""The model card: everything a scorer needs to feed a model correctly, and a reviewer needs to trust it.

It travels inside the ONNX file (metadata key :data:`CARD_KEY`) and beside it in the registry, so a worker
that holds only the file still knows the input order, the defaults for missing values and the threshold.

>>> card = ModelCard(model_name="m", kind="mlp", feature_service="fs", features=("a", "b"), defaults=(0.0, 1.5),
...                  request_features=("b",), threshold=0.5, data_start="2026-01-01T00:00:00+00:00",
...                  data_end="2026-01-02T00:00:00+00:00", seed=0)
>>> ModelCard.from_json(card.to_json()) == card
True
>>> card.store_features
('a',)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from streamscore.errors import StreamscoreError

__all__ = ["CARD_KEY", "INPUT_NAME", "OUTPUT_NAME", "CardError", "ModelCard"]

CARD_KEY = "streamscore.card"
INPUT_NAME = "features"  # float32 [batch, len(features)], columns in ModelCard.features order
OUTPUT_NAME = "score"  # float32 [batch, 1], fraud probability

ModelKind = Literal["mlp", "gbt"]


class CardError(StreamscoreError, ValueError):
    """A card that is missing, malformed or inconsistent: the model cannot be fed safely."""


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """Inputs, defaults and provenance of one trained model.

    ``features`` is the input matrix's column order: the FeatureService's features in its order, then the
    request-time features. ``defaults`` are what a scorer substitutes (and flags) for a missing value.
    """

    model_name: str
    kind: ModelKind
    feature_service: str
    features: tuple[str, ...]
    defaults: tuple[float, ...]
    request_features: tuple[str, ...]
    threshold: float
    data_start: str  # ISO 8601 UTC: first labelled event used (training window start)
    data_end: str  # ISO 8601 UTC: end of the test window
    seed: int
    windows: dict[str, tuple[str, str]] = field(default_factory=dict)  # train/validation/test: [start, end)
    metrics: dict[str, float] = field(default_factory=dict)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if len(self.features) != len(self.defaults):
            raise CardError(f"{len(self.features)} features but {len(self.defaults)} defaults")
        if len(set(self.features)) != len(self.features):
            raise CardError("feature names must be unique")
        unknown = set(self.request_features) - set(self.features)
        if unknown:
            raise CardError(f"request features not among the inputs: {sorted(unknown)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise CardError(f"threshold must be within [0, 1], got {self.threshold}")

    @property
    def store_features(self) -> tuple[str, ...]:
        """The inputs read from the online store (all but the request-time ones), in input order."""
        request = set(self.request_features)
        return tuple(f for f in self.features if f not in request)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            raw: dict[str, Any] = json.loads(text)
            known = {f.name for f in fields(cls)}
            data = {k: v for k, v in raw.items() if k in known}
            for name in ("features", "defaults", "request_features"):
                data[name] = tuple(data[name])
            data["windows"] = {k: tuple(v) for k, v in data.get("windows", {}).items()}
            return cls(**data)
        except CardError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise CardError(f"malformed model card: {exc}") from None
