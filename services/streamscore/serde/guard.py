"""The encode guard: the type checks fastavro's writer leaves out, compiled once per schema.

fastavro's writer silently coerces some wrong types (the string "1.5" into a double, 1.7 into a long, any truthy
value into a boolean, a string into an array of characters), so a bad record would be encoded as a different,
valid one instead of failing. Running the full validator first roughly doubles encoding cost, so only the fields
whose writer is lenient get a cheap check here; the writer's own errors catch the rest. Unions need none: fastavro
validates the value against each branch to pick one.

>>> from streamscore.serde.schemas import load_schema
>>> check = compile_guard(load_schema("transaction"))
>>> check({"amount": "1.5"})
Traceback (most recent call last):
    ...
streamscore.serde.errors.SerdeError: bad-type: Transaction.amount: expected double, got str '1.5'
"""

from __future__ import annotations

import datetime as dt
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from streamscore.serde.errors import SerdeError
from streamscore.serde.schemas import ParsedSchema

__all__ = ["Check", "compile_guard"]

#: A check of one value: returns if it fits, raises ``SerdeError("bad-type")`` otherwise.
Check = Callable[[Any], None]
_MISSING: Final = object()
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _fail(path: str, expected: str, value: Any) -> SerdeError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return SerdeError("bad-type", f"{path}: expected {expected}, got {type(value).__name__} {shown}")


def _is_integral(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _primitive_check(kind: str, logical: str | None, path: str) -> Check | None:
    if kind == "null":

        def check_null(value: Any) -> None:
            if value is not None:
                raise _fail(path, "null", value)

        return check_null
    if kind == "boolean":

        def check_boolean(value: Any) -> None:
            if value is not True and value is not False:
                raise _fail(path, "boolean", value)

        return check_boolean
    if kind in ("int", "long"):
        # Logical int/long types (timestamp-millis, date, ...) also take date/time objects; the
        # writer rejects the wrong kind of those itself.
        temporal = (dt.date, dt.time) if logical else ()
        ranged = kind == "int"

        def check_integer(value: Any) -> None:
            if type(value) is int or _is_integral(value):
                if ranged and not _INT_MIN <= value <= _INT_MAX:
                    raise _fail(path, "a 32-bit int", value)
            elif not (temporal and isinstance(value, temporal)):
                raise _fail(path, f"{logical or kind}", value)

        return check_integer
    if kind in ("float", "double"):

        def check_real(value: Any) -> None:
            if (
                type(value) is not float
                and type(value) is not int
                and (isinstance(value, bool) or not isinstance(value, numbers.Real))
            ):
                raise _fail(path, kind, value)

        return check_real
    return None  # string, bytes: fastavro's writer already rejects wrong types


class _GuardBuilder:
    def __init__(self, named: Mapping[str, Any]) -> None:
        self._named = named
        self._in_progress: set[str] = set()

    def build(self, node: Any, path: str) -> Check | None:
        if isinstance(node, list):
            return None
        if isinstance(node, str):
            named = self._named.get(node)
            return self.build(named, path) if named is not None else _primitive_check(node, None, path)
        kind = node.get("type")
        if not isinstance(kind, str) or kind in self._named:
            return self.build(kind, path)
        if kind in ("record", "error"):
            return self._record(node, path)
        if kind == "array":
            return self._array(self.build(node["items"], f"{path}[]"), path)
        if kind == "map":
            return self._map(self.build(node["values"], f"{path}{{}}"), path)
        if kind == "enum":
            return self._enum(node, path)
        if kind == "fixed":
            return None
        return _primitive_check(kind, node.get("logicalType"), path)

    def _record(self, node: Mapping[str, Any], path: str) -> Check | None:
        name = node["name"]
        if name in self._in_progress:
            return None  # recursive type: deeper levels are left to the writer
        self._in_progress.add(name)
        try:
            checks = [
                (field["name"], check)
                for field in node["fields"]
                if (check := self.build(field["type"], f"{path}.{field['name']}")) is not None
            ]
        finally:
            self._in_progress.discard(name)
        if not checks:
            return None

        def check_record(value: Any) -> None:
            if not isinstance(value, Mapping):
                raise _fail(path, "a mapping (record)", value)
            for field_name, check in checks:
                item = value.get(field_name, _MISSING)
                if item is not _MISSING:
                    check(item)

        return check_record

    @staticmethod
    def _enum(node: Mapping[str, Any], path: str) -> Check:
        # The writer rejects unknown symbols too, but without saying which field.
        symbols = frozenset(node["symbols"])
        expected = f"one of {sorted(symbols)}"

        def check_enum(value: Any) -> None:
            if not isinstance(value, str) or value not in symbols:
                raise _fail(path, expected, value)

        return check_enum

    @staticmethod
    def _array(items: Check | None, path: str) -> Check:
        def check_array(value: Any) -> None:
            if type(value) is not list and (
                not isinstance(value, Sequence) or isinstance(value, str | bytes | bytearray)
            ):
                raise _fail(path, "an array (list)", value)
            if items is not None:
                for item in value:
                    items(item)

        return check_array

    @staticmethod
    def _map(values: Check | None, path: str) -> Check | None:
        if values is None:
            return None  # the writer already requires a mapping with string keys

        def check_map(value: Any) -> None:
            if not isinstance(value, Mapping):
                raise _fail(path, "a map", value)
            for item in value.values():
                values(item)

        return check_map


def compile_guard(schema: ParsedSchema) -> Check | None:
    """The check that ``encode`` runs on a record of ``schema`` first; ``None`` when no field needs one."""
    named: Mapping[str, Any] = schema.get("__named_schemas", {})
    return _GuardBuilder(named).build(schema, str(schema["name"]).rsplit(".", 1)[-1])
