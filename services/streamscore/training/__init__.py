"""Training: a point-in-time-correct training set from Feast, a fitted model, and the gate that decides
whether it may serve.

:func:`train` is the whole job (``streamscore train``); :func:`build_training_set` and the gate are
exposed for notebooks and tests that need one step.
"""

from streamscore.training.dataset import TrainingDataError, TrainingSet, build_training_set, service_features
from streamscore.training.gate import GateReport, decide, evaluate
from streamscore.training.job import TrainResult, train

__all__ = [
    "GateReport",
    "TrainResult",
    "TrainingDataError",
    "TrainingSet",
    "build_training_set",
    "decide",
    "evaluate",
    "service_features",
    "train",
]
