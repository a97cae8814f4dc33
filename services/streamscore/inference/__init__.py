"""Inference: stateless workers that turn score requests on Kafka into predictions on Kafka.

:class:`InferenceWorker` is one worker (``streamscore inference run``); :class:`Scorer` is its batch
arithmetic (online features, request features, defaults, one ONNX Runtime call), usable without Kafka.
"""

from streamscore.inference.scorer import ScoredBatch, Scorer
from streamscore.inference.worker import InferenceWorker, run_workers

__all__ = ["InferenceWorker", "ScoredBatch", "Scorer", "run_workers"]
