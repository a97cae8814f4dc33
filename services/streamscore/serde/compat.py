"""Schema evolution check: can a reader with one schema read data written with another?

Producers and consumers are deployed independently, so a schema change is only safe if every
reader still running can resolve what new writers produce (and new readers can resolve old
messages still in the topics). This walks the two schemas by the Avro specification's
resolution rules instead of trial-decoding a sample, because a sample only exercises the
branches and symbols it happens to contain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from fastavro import parse_schema

from streamscore.serde.errors import SerdeError

__all__ = ["check_compatible"]

_PRIMITIVES: Final = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED: Final = frozenset({"record", "error", "enum", "fixed"})
# Writer type -> reader types it may be read as (Avro spec, "Schema Resolution").
_PROMOTIONS: Final[Mapping[str, frozenset[str]]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}

# After normalisation a node is a primitive name, a union (list) or a complex/named type (dict).
_Node = str | list[Any] | dict[str, Any]


def check_compatible(
    reader_schema: Mapping[str, Any] | list[Any] | str,
    writer_schema: Mapping[str, Any] | list[Any] | str,
) -> None:
    """Raise ``SerdeError("incompatible")`` unless data written with ``writer_schema`` can be read
    with ``reader_schema`` (BACKWARD compatibility of the reader).

    Follows the Avro resolution rules: writer-only fields are skipped; reader-only fields need a
    default; primitives match or are promoted (int -> long -> float -> double, string <-> bytes);
    every writer enum symbol must exist in the reader unless the reader enum has a default;
    named types match on unqualified name or on a reader alias of the writer's full name; fixed
    sizes must be equal; unions are checked branch by branch. Logical types are ignored: the
    underlying type decides. All problems are reported at once in ``detail``.
    Raises ``SerdeError("bad-schema")`` if either schema is not valid Avro.
    """
    reader = _Tree(reader_schema, "reader")
    writer = _Tree(writer_schema, "writer")
    checker = _Checker(reader, writer)
    checker.check(reader.root, writer.root, _root_path(reader.root, reader))
    if checker.problems:
        raise SerdeError("incompatible", "; ".join(checker.problems))


class _Tree:
    """A parsed schema plus its named types, so name references can be followed."""

    def __init__(self, schema: Mapping[str, Any] | list[Any] | str, role: str) -> None:
        try:
            document: Any = dict(schema) if isinstance(schema, Mapping) else schema
            self.root: Any = parse_schema(document)
        except Exception as exc:
            raise SerdeError("bad-schema", f"{role} schema is not valid Avro: {exc}") from exc
        self.names: dict[str, dict[str, Any]] = {}
        self._collect(self.root)

    def _collect(self, node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                self._collect(branch)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in _NAMED and isinstance(node.get("name"), str):
                self.names[node["name"]] = node
            if isinstance(kind, dict | list):
                self._collect(kind)
            for field in node.get("fields", ()):
                self._collect(field.get("type"))
            if "items" in node:
                self._collect(node["items"])
            if "values" in node:
                self._collect(node["values"])

    def resolve(self, node: Any) -> _Node:
        """Follow name references and drop annotations (logical types) down to the real type."""
        while True:
            if isinstance(node, str):
                if node in _PRIMITIVES:
                    return node
                named = self.names.get(node)
                if named is None:  # pragma: no cover - parse_schema already rejects unknown names
                    raise SerdeError("bad-schema", f"unknown type name {node!r}")
                return named
            if isinstance(node, list):
                return node
            if isinstance(node, dict):
                kind = node.get("type")
                if isinstance(kind, str) and (kind in _NAMED or kind in ("array", "map")):
                    return node
                node = kind  # {"type": "long", "logicalType": ...} or a wrapped reference
                continue
            raise SerdeError("bad-schema", f"unexpected schema node {node!r}")


def _short(full_name: str) -> str:
    return full_name.rsplit(".", 1)[-1]


def _aliases(node: Mapping[str, Any]) -> set[str]:
    """Aliases as full names: an unqualified alias lives in the aliased type's namespace."""
    name: str = node.get("name", "")
    namespace = name.rsplit(".", 1)[0] if "." in name else ""
    out = set()
    for alias in node.get("aliases", ()) or ():
        out.add(alias if "." in alias or not namespace else f"{namespace}.{alias}")
    return out


def _names_match(reader: Mapping[str, Any], writer: Mapping[str, Any]) -> bool:
    # Same rule as Java's SchemaCompatibility.schemaNameEquals.
    return _short(reader["name"]) == _short(writer["name"]) or writer["name"] in _aliases(reader)


def _kind(node: _Node) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "union"
    kind = str(node["type"])
    return "record" if kind == "error" else kind


def _describe(node: _Node) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "union"
    if "name" in node:
        return f"{_kind(node)} {node['name']}"
    return _kind(node)


def _root_path(root: Any, tree: _Tree) -> str:
    node = tree.resolve(root)
    return _short(node["name"]) if isinstance(node, dict) and "name" in node else "<root>"


class _Checker:
    def __init__(self, reader: _Tree, writer: _Tree) -> None:
        self.reader = reader
        self.writer = writer
        self.problems: list[str] = []
        # Record pairs already being checked: recursive types would otherwise never terminate.
        self._seen: set[tuple[int, int]] = set()

    def check(self, reader_node: Any, writer_node: Any, path: str) -> None:
        r = self.reader.resolve(reader_node)
        w = self.writer.resolve(writer_node)
        if isinstance(w, list):
            # Any writer branch may occur in the data, so each must be readable.
            for branch in w:
                self.check(r, branch, f"{path}<{_describe(self.writer.resolve(branch))}>")
            return
        if isinstance(r, list):
            chosen = self._pick_branch(r, w)
            if chosen is None:
                self.problems.append(f"{path}: writer type {_describe(w)} matches no branch of the reader union")
            else:
                self.check(chosen, w, path)
            return
        rk, wk = _kind(r), _kind(w)
        if isinstance(r, str) or isinstance(w, str):
            if not (rk == wk or rk in _PROMOTIONS.get(wk, frozenset())):
                self.problems.append(f"{path}: writer type {_describe(w)} cannot be read as {_describe(r)}")
            return
        if rk != wk:
            self.problems.append(f"{path}: writer type {_describe(w)} cannot be read as {_describe(r)}")
        elif rk == "array":
            self.check(r["items"], w["items"], f"{path}[]")
        elif rk == "map":
            self.check(r["values"], w["values"], f"{path}{{}}")
        elif not _names_match(r, w):
            self.problems.append(
                f"{path}: writer {_describe(w)} cannot be read as {_describe(r)} "
                f"(different name and no reader alias {w['name']!r})"
            )
        elif rk == "record":
            self._check_record(r, w, path)
        elif rk == "enum":
            missing = [s for s in w["symbols"] if s not in set(r["symbols"])]
            if missing and "default" not in r:
                self.problems.append(
                    f"{path}: writer enum symbols {missing} are not in the reader enum, which has no default"
                )
        elif rk == "fixed" and r["size"] != w["size"]:
            self.problems.append(f"{path}: fixed size {w['size']} cannot be read as size {r['size']}")

    def _check_record(self, r: dict[str, Any], w: dict[str, Any], path: str) -> None:
        key = (id(r), id(w))
        if key in self._seen:
            return
        self._seen.add(key)
        writer_fields = {field["name"]: field for field in w["fields"]}
        for field in r["fields"]:
            match = writer_fields.get(field["name"])
            if match is None:
                match = next((writer_fields[a] for a in field.get("aliases", ()) if a in writer_fields), None)
            if match is not None:
                self.check(field["type"], match["type"], f"{path}.{field['name']}")
            elif "default" not in field:
                self.problems.append(
                    f"{path}.{field['name']}: reader field is missing from the writer and has no default"
                )

    def _pick_branch(self, union: list[Any], w: _Node) -> Any | None:
        """The reader branch the writer's value resolves to: exact match first, then promotion."""
        wk = _kind(w)
        branches = [self.reader.resolve(b) for b in union]
        for branch in branches:
            if _kind(branch) != wk:
                continue
            if isinstance(branch, dict) and isinstance(w, dict) and "name" in w and not _names_match(branch, w):
                continue
            return branch
        for branch in branches:
            if isinstance(branch, str) and branch in _PROMOTIONS.get(wk, frozenset()):
                return branch
        return None
