"""Request-time features: what the model learns from the transaction being scored, not from the store.

The online store holds aggregates of a user's *past* transactions; what makes a request suspicious is how
it compares with them (ten times the usual amount, online when the card is used in shops). Training and
serving both call :func:`request_features`, on the labelled transaction and on the score request, so the
two can never compute them differently.

>>> import numpy as np
>>> out = request_features(np.array([10.0, 50.0]), np.array(["POS", "ECOM"]),
...                        {"user_amount_mean_24h": np.array([20.0, np.nan])})
>>> [round(float(v), 3) for v in out["req_amount_to_user_mean_24h"]]
[0.5, nan]
>>> out["req_channel_ecom"].tolist()
[0.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

__all__ = ["REQUEST_FEATURES", "request_features"]

REQUEST_FEATURES = (
    "req_amount_log",
    "req_amount_to_user_mean_24h",
    "req_amount_to_user_max_24h",
    "req_channel_ecom",
    "req_channel_atm",
    "req_channel_moto",
)

_RATIOS = {"req_amount_to_user_mean_24h": "user_amount_mean_24h", "req_amount_to_user_max_24h": "user_amount_max_24h"}


def request_features(
    amount: NDArray[np.float64],
    channel: NDArray[np.str_] | NDArray[np.object_],
    store: Mapping[str, NDArray[np.float64]],
) -> dict[str, NDArray[np.float64]]:
    """:data:`REQUEST_FEATURES` for a batch, in that order.

    ``store`` holds the online (or point-in-time) values, NaN where the entity has none; a ratio against a
    missing or zero aggregate is NaN, so the model's declared default fills it the same way in training
    and serving.
    """
    amount = np.asarray(amount, dtype=np.float64)
    out = {"req_amount_log": np.log1p(np.maximum(amount, 0.0))}
    for name, column in _RATIOS.items():
        base = np.asarray(store.get(column, np.full(len(amount), np.nan)), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[name] = np.where(base > 0, amount / np.where(base > 0, base, 1.0), np.nan)
    for symbol in ("ECOM", "ATM", "MOTO"):
        out[f"req_channel_{symbol.lower()}"] = (np.asarray(channel) == symbol).astype(np.float64)
    return out
