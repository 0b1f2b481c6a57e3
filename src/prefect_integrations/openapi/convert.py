"""OpenAPI Schema Objects to the registry's JSON Schema dialect (draft 2020-12).

`SchemaConverter.convert` inlines every ``$ref`` (resolved by `Spec.lookup`) and rewrites
what differs between the OpenAPI dialects and draft 2020-12:

- ``nullable: true`` (3.0) and ``x-nullable: true`` (2.0) add ``"null"`` to ``type`` (and
  ``None`` to ``enum``); a nullable ``allOf``/``oneOf``/``anyOf`` or ``$ref`` becomes
  ``anyOf: [..., {"type": "null"}]``;
- boolean ``exclusiveMinimum``/``exclusiveMaximum`` become the numeric form;
- ``example`` becomes ``examples``; a list-valued ``items`` (not allowed by 2.0 or 3.0)
  becomes ``items: {"anyOf": [...]}`` in an array schema, and ``anyOf: [...]`` in a schema
  without ``type: array`` (how Slack's description says "one of these"); a ``default`` of
  the wrong type (``"false"`` for a boolean) is converted or dropped;
- ``readOnly`` properties leave input schemas and ``writeOnly`` ones leave output
  schemas; ``additionalProperties: false`` leaves output schemas (a provider adding a field
  must not break a flow);
- ``discriminator``, ``xml``, ``externalDocs`` and ``x-`` extensions are dropped (they do
  not constrain values); ``type: file`` and any other unknown keyword is reported.

A reference is inlined again while it is being expanded (a cycle) only ``cycle_depth``
times, and no schema is inlined deeper than ``max_depth`` references (a reference to a
schema without subschemas, such as an enum, is always inlined): past either limit the
reference becomes ``{"type": <its type>, "description": "... not expanded ..."}``, which
accepts any value of that type; in an input schema an object past ``max_depth`` keeps its
required fields (cut the same way below), so that what the provider requires stays
required. Every change that loses information is added to
the `Report`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urldefrag

from prefect_integrations.openapi.source import JsonPath, Spec

__all__ = ["Note", "Report", "SchemaConverter", "json_type_of"]

Mode = Literal["input", "output"]

_SCHEMA_KEYS = ("not", "additionalProperties", "contains", "propertyNames", "if", "then", "else")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_KEPT = {
    "title",
    "description",
    "type",
    "enum",
    "const",
    "default",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "required",
    "deprecated",
    "readOnly",
    "writeOnly",
    "examples",
    "$comment",
    "contentMediaType",
    "contentEncoding",
}
_DROPPED = {"discriminator", "xml", "externalDocs", "nullable", "x-nullable", "example", "$schema"}
_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": list,
    "object": dict,
    "null": type(None),
}


@dataclass(frozen=True)
class Note:
    """One thing the import could not convert as it is: where in the description, and what."""

    path: JsonPath
    message: str


@dataclass
class Report:
    """What the import could not convert, in the order met (duplicates kept once)."""

    notes: list[Note] = field(default_factory=list)

    def add(self, path: JsonPath, message: str) -> None:
        """Record ``message`` about the description at ``path`` (once)."""
        note = Note(tuple(path), message)
        if note not in self.notes:
            self.notes.append(note)


def json_type_of(value: Any) -> str:
    """The JSON type name of a parsed value."""
    for name, kind in _TYPES.items():
        if name not in ("number",) and type(value) is kind:
            return name
    return "number" if isinstance(value, float) else "object"


def _matches(value: Any, type_: Any) -> bool:
    names = type_ if isinstance(type_, list) else [type_]
    for name in names:
        kind = _TYPES.get(name) if isinstance(name, str) else None
        if kind is None:
            return True
        if isinstance(value, bool) and name in ("integer", "number"):
            continue
        if isinstance(value, kind):
            return True
    return False


def _coerce_default(value: Any, type_: Any) -> tuple[bool, Any]:
    """A string default of a boolean or number converted to it: (converted?, value)."""
    if not isinstance(value, str):
        return False, value
    if type_ == "boolean" and value.lower() in ("true", "false"):
        return True, value.lower() == "true"
    if type_ in ("integer", "number"):
        try:
            number = float(value) if type_ == "number" else int(value)
        except ValueError:
            return False, value
        return True, number
    return False, value


@dataclass
class SchemaConverter:
    """Converts the Schema Objects of one description; see the module docstring."""

    spec: Spec
    report: Report
    max_depth: int = 4
    cycle_depth: int = 1

    def convert(self, node: Any, base: str, where: JsonPath, *, mode: Mode) -> dict[str, Any]:
        """The draft 2020-12 schema of ``node`` (a Schema Object at ``where`` in the file)."""
        return self._convert(node, base, where, mode=mode, stack=())

    def _convert(
        self, node: Any, base: str, where: JsonPath, *, mode: Mode, stack: tuple[str, ...]
    ) -> dict[str, Any]:
        if isinstance(node, bool):
            return {} if node else {"not": {}}
        if not isinstance(node, dict):
            self.report.add(where, "not a schema object; any value accepted")
            return {}
        if isinstance(node.get("$ref"), str):
            return self._reference(node, base, where, mode=mode, stack=stack)
        out: dict[str, Any] = {}
        for key, value in node.items():
            self._keyword(out, node, key, value, base, (*where, key), mode=mode, stack=stack)
        self._finish(out, node, where, mode=mode)
        return out

    def _reference(
        self,
        node: dict[str, Any],
        base: str,
        where: JsonPath,
        *,
        mode: Mode,
        stack: tuple[str, ...],
    ) -> dict[str, Any]:
        target, target_base, uri = self.spec.deref(node, base, where)
        assert uri is not None
        name = uri.rsplit("/", 1)[-1]
        cyclic = stack.count(uri) >= self.cycle_depth
        deep = len(stack) >= self.max_depth and not _is_leaf(target)
        if deep and not cyclic and mode == "input" and isinstance(target, dict):
            return self._required_only(target, target_base, uri, name, stack)
        if cyclic or deep:
            why = "cyclic reference" if cyclic else f"nesting deeper than {self.max_depth}"
            cut: dict[str, Any] = {"description": f"{name}: not expanded ({why})"}
            if isinstance(target, dict) and isinstance(target.get("type"), str | list):
                cut["type"] = target["type"]
                if target.get("nullable") is True or target.get("x-nullable") is True:
                    cut["type"] = _with_null(cut["type"])
            return cut
        out = self._convert(target, target_base, _pointer(uri), mode=mode, stack=(*stack, uri))
        if node.get("nullable") is True or node.get("x-nullable") is True:
            out = {"anyOf": [out, {"type": "null"}]}
        if isinstance(node.get("description"), str) and "description" not in out:
            out["description"] = node["description"]
        return out

    def _required_only(
        self, target: dict[str, Any], base: str, uri: str, name: str, stack: tuple[str, ...]
    ) -> dict[str, Any]:
        """An input object past ``max_depth``: only its required fields, so they stay required."""
        found = target.get("properties")
        properties: dict[str, Any] = found if isinstance(found, dict) else {}
        required = [r for r in target.get("required", []) if r in properties]
        shallow: dict[str, Any] = {
            k: target[k] for k in ("type", "nullable", "x-nullable") if k in target
        }
        if required:
            shallow["required"] = required
            shallow["properties"] = {r: properties[r] for r in required}
        out = self._convert(shallow, base, _pointer(uri), mode="input", stack=(*stack, uri))
        out["description"] = (
            f"{name}: its required fields only (nesting deeper than {self.max_depth})"
        )
        return out

    def _keyword(
        self,
        out: dict[str, Any],
        node: dict[str, Any],
        key: str,
        value: Any,
        base: str,
        where: JsonPath,
        *,
        mode: Mode,
        stack: tuple[str, ...],
    ) -> None:
        sub = self._convert
        if key == "properties" and isinstance(value, dict):
            skip = "readOnly" if mode == "input" else "writeOnly"
            props: dict[str, Any] = {}
            for name, prop in value.items():
                resolved, _, _ = self.spec.deref(prop, base, (*where, name))
                if isinstance(resolved, dict) and resolved.get(skip) is True:
                    continue
                props[name] = sub(prop, base, (*where, name), mode=mode, stack=stack)
            out["properties"] = props
        elif key == "items":
            if isinstance(value, list):
                items = [
                    sub(v, base, (*where, i), mode=mode, stack=stack) for i, v in enumerate(value)
                ]
                if node.get("type") == "array":
                    self.report.add(where, "a list of schemas is not valid 'items'; items anyOf")
                    out["items"] = {"anyOf": items}
                else:  # Slack's way of saying "one of these" for a value of any type
                    self.report.add(where, "a list of schemas is not valid 'items'; read as anyOf")
                    out["anyOf"] = items
            else:
                out["items"] = sub(value, base, where, mode=mode, stack=stack)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [
                sub(v, base, (*where, i), mode=mode, stack=stack) for i, v in enumerate(value)
            ]
        elif key in _SCHEMA_KEYS:
            if key == "additionalProperties" and isinstance(value, bool):
                if value or mode == "input":
                    out[key] = value
            else:
                out[key] = sub(value, base, where, mode=mode, stack=stack)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            if value is True and (bound := node.get(key.replace("exclusiveM", "m"))) is not None:
                out[key] = bound
            elif not isinstance(value, bool):
                out[key] = value
        elif key in ("minimum", "maximum") and node.get("exclusiveM" + key[1:]) is True:
            pass  # the numeric exclusive bound replaces it
        elif key == "example":
            out.setdefault("examples", [value])
        elif key == "pattern" and isinstance(value, str):
            try:
                re.compile(value)
            except re.error as exc:
                self.report.add(
                    where, f"pattern is not a Python regular expression ({exc}); dropped"
                )
            else:
                out[key] = value
        elif key == "type" and value == "file":
            self.report.add(where, "type 'file' (an upload) has no JSON form; any value accepted")
        elif key in _KEPT:
            out[key] = value
        elif key not in _DROPPED and not key.startswith("x-"):
            self.report.add(where, f"keyword {key!r} is not converted; dropped")

    def _finish(
        self, out: dict[str, Any], node: dict[str, Any], where: JsonPath, *, mode: Mode
    ) -> None:
        nullable = node.get("nullable") is True or node.get("x-nullable") is True
        if nullable:
            if "type" in out:
                out["type"] = _with_null(out["type"])
                if isinstance(out.get("enum"), list) and None not in out["enum"]:
                    out["enum"] = [*out["enum"], None]
            elif any(k in out for k in _SCHEMA_LISTS):
                inner = {k: out.pop(k) for k in list(out) if k in _SCHEMA_LISTS}
                out["anyOf"] = [inner, {"type": "null"}]
        if "default" in out and "type" in out and not _matches(out["default"], out["type"]):
            converted, value = _coerce_default(out["default"], out["type"])
            if converted:
                out["default"] = value
                self.report.add(
                    (*where, "default"), f"default {node['default']!r} read as {value!r}"
                )
            else:
                del out["default"]
                self.report.add((*where, "default"), "default does not match the type; dropped")
        if isinstance(out.get("required"), list) and isinstance(out.get("properties"), dict):
            props = out["properties"]
            declared = node.get("properties")
            declared = declared if isinstance(declared, dict) else {}
            out["required"] = [r for r in out["required"] if r in props or r not in declared]
            if not out["required"]:
                del out["required"]
        elif out.get("required") == []:
            del out["required"]


def _is_leaf(schema: Any) -> bool:
    """A schema with no subschemas (a string with an enum...): inlined at any depth."""
    return isinstance(schema, dict) and not any(
        key in schema for key in ("properties", "items", "additionalProperties", *_SCHEMA_LISTS)
    )


def _pointer(uri: str) -> JsonPath:
    """The JSON path of a reference's target inside its document (``#/a/b`` -> a, b)."""
    fragment = urldefrag(uri).fragment
    parts = [unquote(p).replace("~1", "/").replace("~0", "~") for p in fragment.split("/") if p]
    return tuple(int(p) if p.isdigit() else p for p in parts)


def _with_null(type_: Any) -> Any:
    if isinstance(type_, list):
        return type_ if "null" in type_ else [*type_, "null"]
    return type_ if type_ == "null" else [type_, "null"]
