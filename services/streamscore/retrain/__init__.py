"""Continuous training: persistent drift → retrain on the recent window → gate → promote.

``streamscore retrain-on-drift`` runs :func:`run_retrainer`; :func:`decisions` reads back what it did.
"""

from streamscore.retrain.history import Decision, decisions
from streamscore.retrain.policy import DriftPolicy, Trigger
from streamscore.retrain.service import Retrainer, RetrainOutcome, retrain_now, run_retrainer
from streamscore.retrain.window import RecentWindow, WindowError, export_window

__all__ = [
    "Decision",
    "DriftPolicy",
    "RecentWindow",
    "RetrainOutcome",
    "Retrainer",
    "Trigger",
    "WindowError",
    "decisions",
    "export_window",
    "retrain_now",
    "run_retrainer",
]
