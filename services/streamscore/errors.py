"""One root for every error streamscore raises on purpose, so a caller needs one ``except`` to tell a problem a user
can act on from a bug.

The CLI prints a :class:`StreamscoreError`'s message as one line (no traceback) and exits with the class's
``exit_code``; anything else is a bug, printed as one line that names the exception (its traceback with
``streamscore --debug``). So a message says what went wrong and what to do about it, and a module adds a subclass
here rather than a second root. Where callers may rely on a builtin (``except ValueError`` for a bad value,
``except RuntimeError`` for a client failure) that builtin stays a second base, after this one.

The hierarchy, along an event's path, with the module that defines each class::

    StreamscoreError                    exit_code 1
    ├── ConfigError                     settings              exit_code 2: settings that cannot work
    ├── TimespecError                   timespec              + ValueError; exit_code 2: a time or duration typed wrong
    ├── KafkaUnavailable                errors (kafka.topics) the brokers did not answer in time
    ├── ConsumerError                   kafka.consumer        + RuntimeError
    ├── DeliveryError                   kafka.producer        + RuntimeError: do not commit the inputs
    ├── SerdeError                      serde.errors          + ValueError; ``reason`` is a stable code
    ├── PlanError                       features.plan         + ValueError
    ├── SparkUnavailable                spark                 Spark asked for without PySpark or Java
    ├── StateRecoveryError              features.recovery     the input no longer holds what a rebuild needs
    ├── CardError                       models.card           + ValueError
    ├── EquivalenceError                models.onnx_export    + ValueError
    ├── ModelIntegrityError             models.runtime        bytes not the registered ones
    ├── ModelLoadError                  models.runtime
    ├── RegistryError                   models.tracking       MLflow (also exported by models.registry)
    ├── TrainingDataError               training.dataset
    ├── WindowError                     retrain.window
    ├── PrometheusError                 monitoring.prom
    │   ├── PrometheusUnavailable
    │   └── BadQuery
    ├── ReportError                     monitoring.report
    └── StackError                      stack.components

``tests/test_errors.py`` imports every module and fails on an exception class outside this tree.
"""

from __future__ import annotations

__all__ = ["KafkaUnavailable", "StreamscoreError"]


class StreamscoreError(Exception):
    """A problem the user can act on, described in one line."""

    exit_code = 1


class KafkaUnavailable(StreamscoreError):
    """The brokers did not answer in time."""

    def __init__(self, bootstrap: str, detail: str) -> None:
        super().__init__(
            f"cannot reach Kafka at {bootstrap}: {detail}; is it running? (`streamscore stack up` starts one)"
        )
