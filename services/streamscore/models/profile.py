"""The reference profile: how every model input and the score were distributed on the training data.

Stored with each model version (``profile.json``), it is what drift monitoring compares live traffic
with. Per column: decile bin edges with the share of rows in each bin (for PSI), 101 percentiles (for a
Wasserstein or KS distance without keeping the data), the missing rate, and moments. Inputs are profiled
as the model saw them (after imputation); the missing rate is kept separately, since a feature that
suddenly goes missing is drift too.

>>> import numpy as np
>>> p = build_profile({"x": np.arange(100.0)}, bins=4)
>>> p["columns"]["x"]["edges"], p["columns"]["x"]["fractions"]
([24.75, 49.5, 74.25], [0.25, 0.25, 0.25, 0.25])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["PROFILE_VERSION", "build_profile", "column_profile"]

PROFILE_VERSION = 1
PERCENTILES = np.linspace(0, 100, 101)


def column_profile(values: np.ndarray, missing: np.ndarray | None = None, *, bins: int = 10) -> dict[str, Any]:
    """Profile of one column; ``missing`` flags rows whose value was imputed (default: none)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("cannot profile an empty column")
    # Interior cut points at the quantiles, deduplicated: a count or a one-hot has few distinct values.
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)
    return {
        "count": int(x.size),
        "missing_rate": float(np.mean(missing)) if missing is not None else 0.0,
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
        "edges": [float(e) for e in edges],
        "fractions": [float(c) for c in counts / x.size],
        "percentiles": [float(q) for q in np.percentile(x, PERCENTILES)],
    }


def build_profile(
    columns: Mapping[str, np.ndarray], missing: Mapping[str, np.ndarray] | None = None, *, bins: int = 10
) -> dict[str, Any]:
    """Profile of every column, in the given order; JSON-serialisable."""
    missing = missing or {}
    return {
        "version": PROFILE_VERSION,
        "bins": bins,
        "columns": {name: column_profile(v, missing.get(name), bins=bins) for name, v in columns.items()},
    }
