"""The Feast feature store on Redis: configuration from the settings, ``feast apply``, and the fast writer.

:func:`feature_store` builds Feast's store from :class:`~streamscore.settings.Settings` (no YAML), and
:func:`apply_definitions` registers ``feature_repo/definitions.py`` in it. :class:`OnlineWriter` is how
computed features reach Redis: byte for byte Feast's layout, one pipelined round trip per batch, no read before
write, so replays are idempotent and corrections land. Read back with Feast's ``get_online_features``.
"""

from streamscore.store.config import (
    PROJECT,
    REPO_PATH,
    apply_definitions,
    feast_env,
    feature_store,
    quiet_feast,
    repo_config,
)
from streamscore.store.online import OnlineWriter

__all__ = [
    "PROJECT",
    "REPO_PATH",
    "OnlineWriter",
    "apply_definitions",
    "feast_env",
    "feature_store",
    "quiet_feast",
    "repo_config",
]
