"""One error root: the CLI turns a StreamscoreError into one line and an exit code, so a class outside the tree
would reach the user as a traceback. Classes are found by importing every module, not listed by hand."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import streamscore
from streamscore import errors
from streamscore.errors import StreamscoreError


def _import_again(name: str) -> None:
    importlib.import_module(name)  # walk_packages swallows a package's ImportError; let it fail the test


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a streamscore module, by qualified name."""
    found: dict[str, type[BaseException]] = {}
    modules = [streamscore.__name__]
    modules += [
        m.name for m in pkgutil.walk_packages(streamscore.__path__, f"{streamscore.__name__}.", onerror=_import_again)
    ]
    for name in modules:
        for obj in vars(importlib.import_module(name)).values():
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__.startswith("streamscore"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


@pytest.fixture(scope="module")
def exception_classes() -> dict[str, type[BaseException]]:
    return _exception_classes()


def test_discovery_sees_every_package(exception_classes: dict[str, type[BaseException]]) -> None:
    # A walk that silently imported nothing would make the next test pass vacuously.
    names = {cls.__name__ for cls in exception_classes.values()}
    assert {"StreamscoreError", "ConfigError", "SerdeError", "PlanError", "RegistryError", "DeliveryError"} <= names


def test_every_exception_class_is_a_streamscore_error(exception_classes: dict[str, type[BaseException]]) -> None:
    outside = sorted(name for name, cls in exception_classes.items() if not issubclass(cls, StreamscoreError))
    assert outside == [], f"not under streamscore.errors.StreamscoreError: {outside}"


def test_every_exception_class_is_in_the_documented_tree(exception_classes: dict[str, type[BaseException]]) -> None:
    doc = errors.__doc__ or ""
    missing = sorted(name for name, cls in exception_classes.items() if cls.__name__ not in doc)
    assert missing == [], f"add these to the hierarchy in streamscore/errors.py's docstring: {missing}"


@pytest.mark.parametrize(
    ("name", "builtin"),
    [
        ("streamscore.serde.errors.SerdeError", ValueError),
        ("streamscore.features.plan.PlanError", ValueError),
        ("streamscore.models.card.CardError", ValueError),
        ("streamscore.models.onnx_export.EquivalenceError", ValueError),
        ("streamscore.kafka.consumer.ConsumerError", RuntimeError),
        ("streamscore.kafka.producer.DeliveryError", RuntimeError),
    ],
)
def test_builtin_bases_are_kept_as_mixins(
    exception_classes: dict[str, type[BaseException]], name: str, builtin: type[Exception]
) -> None:
    """Callers written against ``except ValueError`` or ``except RuntimeError`` still catch these."""
    cls = exception_classes[name]
    assert issubclass(cls, builtin)
    assert cls.__mro__.index(StreamscoreError) < cls.__mro__.index(builtin)


def test_exit_codes_are_process_exit_statuses(exception_classes: dict[str, type[BaseException]]) -> None:
    for name, cls in exception_classes.items():
        if issubclass(cls, StreamscoreError):
            assert isinstance(cls.exit_code, int), name
            assert 1 <= cls.exit_code <= 125, name  # 0 is success; 126 and up mean "not run" or a signal to a shell
