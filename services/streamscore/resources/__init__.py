"""The files the package needs at run time, found the same way wherever it runs.

The Avro schemas (``schemas/``) and the Feast repository (``feature_repo/``: the feature definitions and
``feature_store.yaml``) are edited at the top of the repository. ``resources/schemas`` and
``resources/feature_repo`` are symlinks to them: a checkout or an editable install reads the originals
through the links, a wheel (and so the container image) carries copies as package data. Either way they
are at the same place relative to the installed package, so nothing depends on the current directory or
on where site-packages is, which is what broke the image when the paths were ``Path(__file__).parents[2]``.

>>> (schemas_dir() / "transaction.avsc").is_file(), (feature_repo_dir() / "definitions.py").is_file()
(True, True)
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["feature_repo_dir", "schemas_dir"]


def _resource(name: str) -> Path:
    # An installed package is a directory on disk (never a zip: Feast and fastavro need real paths).
    return Path(str(files(__name__) / name)).resolve()


def schemas_dir() -> Path:
    """The Avro schemas: ``<name>.avsc`` for each payload."""
    return _resource("schemas")


def feature_repo_dir() -> Path:
    """The Feast repository: ``definitions.py`` and ``feature_store.yaml``."""
    return _resource("feature_repo")
