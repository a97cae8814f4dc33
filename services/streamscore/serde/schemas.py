"""Where schemas come from and how a message names the schema that wrote it.

Schemas live as ``.avsc`` files in the repository's ``schemas/`` folder so that producers,
consumers and the schema registry all agree on one source of truth. Parsing is comparatively
slow, so every file is parsed once per process and cached. A schema is identified on the wire by
its CRC-64-AVRO fingerprint (Avro single-object encoding); :class:`SchemaStore` is the reader's
map from fingerprint back to the writer schema.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fastavro import parse_schema
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from streamscore.resources import schemas_dir
from streamscore.serde.errors import SerdeError

__all__ = [
    "DEFAULT_SCHEMAS_DIR",
    "SCHEMA_NAMES",
    "ParsedSchema",
    "SchemaStore",
    "fingerprint_of",
    "load_schema",
    "parse",
]

#: A schema as returned by :func:`fastavro.parse_schema`: treat it as read-only, it is shared.
ParsedSchema = dict[str, Any]

SCHEMA_NAMES: Final[tuple[str, ...]] = (
    "transaction",
    "score_request",
    "prediction",
    "drift_report",
    "dead_letter",
)

DEFAULT_SCHEMAS_DIR: Final[Path] = schemas_dir()

# File stems only: keeps a schema name from walking out of the schemas folder.
_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class LoadedSchema:
    """A parsed schema together with what is needed to put it on the wire or in a registry."""

    parsed: ParsedSchema
    fingerprint: bytes
    #: The schema as written (docs and defaults included); what a registry must see, because
    #: the parsing canonical form drops defaults and the registry checks compatibility with them.
    json_text: str


def fingerprint_of(schema: Mapping[str, Any] | list[Any] | str) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form.

    fastavro returns the hex of the fingerprint bytes already in little-endian order (as Java's
    ``SchemaNormalization.parsingFingerprint("CRC-64-AVRO", ...)`` does), which is the order the
    single-object encoding puts on the wire, so the hex only needs decoding.
    """
    try:
        canonical = to_parsing_canonical_form(dict(schema) if isinstance(schema, Mapping) else schema)
        return bytes.fromhex(_fastavro_fingerprint(canonical, "CRC-64-AVRO"))
    except Exception as exc:
        raise SerdeError("bad-schema", f"cannot fingerprint schema: {exc}") from exc


def parse(schema: Mapping[str, Any]) -> LoadedSchema:
    """Parse and fingerprint a schema document, turning any fastavro complaint into a SerdeError."""
    # A parsed schema carries fastavro's bookkeeping keys at the top; a registry must not see them.
    document = {key: value for key, value in schema.items() if not key.startswith("__")}
    try:
        parsed = parse_schema(document)
        json_text = json.dumps(document, separators=(",", ":"))
    except Exception as exc:
        raise SerdeError("bad-schema", f"invalid Avro schema: {exc}") from exc
    if not isinstance(parsed, dict):  # pragma: no cover - parse_schema of a dict returns a dict
        raise SerdeError("bad-schema", "schema did not parse to a JSON object")
    return LoadedSchema(parsed=parsed, fingerprint=fingerprint_of(parsed), json_text=json_text)


@functools.cache
def load_file(path: Path) -> LoadedSchema:
    """Parse one ``.avsc`` file; cached per path because schema files do not change at run time."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SerdeError("unknown-schema", f"no schema file {path}") from exc
    except (OSError, ValueError) as exc:
        raise SerdeError("bad-schema", f"cannot read schema file {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise SerdeError("bad-schema", f"{path}: top level must be a JSON object (a named schema)")
    try:
        return parse(document)
    except SerdeError as exc:
        raise SerdeError("bad-schema", f"{path}: {exc.detail}") from exc


def schema_path(name: str, schemas_dir: str | Path | None = None) -> Path:
    """The file a schema name refers to; rejects names that could escape the folder."""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise SerdeError("unknown-schema", f"invalid schema name {name!r}")
    base = DEFAULT_SCHEMAS_DIR if schemas_dir is None else Path(schemas_dir)
    return base.resolve() / f"{name}.avsc"


def load_schema(name: str, schemas_dir: str | Path | None = None) -> ParsedSchema:
    """The parsed schema ``<schemas_dir>/<name>.avsc`` (default: the repository's ``schemas/``).

    The result is cached and shared: do not mutate it.
    """
    return load_file(schema_path(name, schemas_dir)).parsed


class SchemaStore:
    """Fingerprint -> writer schema, the reader side of single-object encoding.

    A reader can only decode what it can find a writer schema for, so the store is preloaded with
    every ``.avsc`` under the schemas folder (subfolders included, so retired versions kept e.g.
    in ``schemas/history/`` stay readable) and grows with :meth:`add`.
    """

    def __init__(self, schemas_dir: str | Path | None = None, *, preload: bool = True) -> None:
        self._schemas: dict[bytes, LoadedSchema] = {}
        self._lock = threading.Lock()
        if preload:
            base = DEFAULT_SCHEMAS_DIR if schemas_dir is None else Path(schemas_dir)
            for path in sorted(base.resolve().rglob("*.avsc")):
                self._put(load_file(path))

    def _put(self, loaded: LoadedSchema) -> bytes:
        with self._lock:
            self._schemas.setdefault(loaded.fingerprint, loaded)
        return loaded.fingerprint

    def add(self, schema: Mapping[str, Any]) -> bytes:
        """Register a writer schema (raw or already parsed) and return its 8-byte fingerprint."""
        return self._put(parse(schema))

    def add_loaded(self, loaded: LoadedSchema) -> bytes:
        """Register an already parsed schema without parsing it again."""
        return self._put(loaded)

    def get(self, fingerprint: bytes) -> ParsedSchema:
        """The writer schema for ``fingerprint``; ``SerdeError("unknown-schema")`` if absent."""
        loaded = self._schemas.get(bytes(fingerprint))
        if loaded is None:
            raise SerdeError("unknown-schema", f"no schema with fingerprint {bytes(fingerprint).hex()}")
        return loaded.parsed

    def __contains__(self, fingerprint: object) -> bool:
        return isinstance(fingerprint, bytes | bytearray) and bytes(fingerprint) in self._schemas

    def __len__(self) -> int:
        return len(self._schemas)

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._schemas))

    def __repr__(self) -> str:
        return f"SchemaStore({len(self)} schemas)"


@functools.cache
def default_store(schemas_dir: Path) -> SchemaStore:
    """One shared store per schemas folder, so writers and readers in a process see each other."""
    return SchemaStore(schemas_dir)
