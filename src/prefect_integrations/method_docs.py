"""What a method takes and returns, for people and type checkers, read from its schemas.

One description serves the generated task's docstring (``help(xero.create_invoice)``),
``prefect-integrations definitions show`` (text and ``--json``) and the type stubs
(`prefect_integrations.stubs`): every parameter with its Python type, whether it is
required, its default, its description and its constraints (``minLength``, ``format``,
``pattern``, ...), nested fields included (``line_items[].quantity``), then the output
fields.

It reads plain definition documents and imports nothing but the standard library, so the
wheel's build hook can render the stubs without the package's dependencies.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "INSTANCE_DOC",
    "Field",
    "describe_method",
    "method_doc",
    "parameter_name",
    "task_parameters",
    "type_expression",
]

#: The ``instance`` parameter every generated task has besides the method's inputs.
INSTANCE_DOC = (
    "The instance to call: an instance id or an IntegrationInstance block; "
    "default: the one integration_context resolves."
)
_SCALARS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}
#: Keywords shown as constraints, in this order.
_CONSTRAINTS = (
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "enum",
    "const",
    "additionalProperties",
    "anyOf",
    "oneOf",
)
_NO_DEFAULT: Any = object()

#: Names an object schema: (the schema, its path of name parts) -> a type expression.
ObjectNamer = Callable[[Mapping[str, Any], tuple[str, ...]], str]


def parameter_name(prop: str) -> str | None:
    """The task parameter of an input property (None if no identifier can name it).

    Characters that cannot be in an identifier become ``_``; a Python keyword or
    ``instance`` gets a trailing ``_`` (``class`` -> ``class_``).
    """
    name = re.sub(r"\W", "_", prop)
    if not name.isidentifier():
        return None
    return f"{name}_" if keyword.iskeyword(name) or name == "instance" else name


def task_parameters(schema: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any], bool]]:
    """``(parameter, property, property schema, required)`` in the task's order.

    Required properties first, then the others, each group in the schema's order; a
    property no identifier can name, or whose name another one took, has no parameter.
    """
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = {r for r in schema.get("required", []) if isinstance(r, str)}
    found: list[tuple[str, str, Mapping[str, Any], bool]] = []
    seen: set[str] = set()
    for prop in sorted(properties, key=lambda p: p not in required):
        name = parameter_name(prop)
        if name is None or name in seen:
            continue
        seen.add(name)
        sub = properties[prop] if isinstance(properties[prop], Mapping) else {}
        found.append((name, prop, sub, prop in required))
    return found


def _literal(values: list[Any]) -> str | None:
    """``Literal[...]`` of JSON values, or None when one cannot be a literal (a float)."""
    if not values or not all(v is None or isinstance(v, str | int) for v in values):
        return None
    if all(v is None for v in values):
        return "None"
    return f"Literal[{', '.join(repr(v) for v in values)}]"


def type_expression(
    schema: object, *, namer: ObjectNamer | None = None, path: tuple[str, ...] = ()
) -> str:
    """The Python type of values a schema accepts, as source text.

    ``enum``/``const`` -> ``Literal[...]``; ``string``/``integer``/``number``/``boolean``/
    ``null`` -> ``str``/``int``/``float``/``bool``/``None`` (a ``format`` is still a ``str``);
    ``array`` -> ``list[...]``; an object with ``properties`` -> what ``namer`` calls it
    (``dict[str, Any]`` without one); a list of types or an ``anyOf``/``oneOf`` of typed
    alternatives -> their union; anything else -> ``Any``.
    """
    if not isinstance(schema, Mapping):
        return "Any"
    for key, values in (("const", [schema.get("const")]), ("enum", schema.get("enum"))):
        if key in schema and isinstance(values, list):
            literal = _literal(values)
            if literal is not None:
                return literal
    kind = schema.get("type")
    if isinstance(kind, str):
        return _single(schema, kind, namer, path)
    if isinstance(kind, list):
        parts = [_single(schema, k, namer, path) for k in kind if isinstance(k, str)]
        return " | ".join(dict.fromkeys(parts)) or "Any"
    for key in ("anyOf", "oneOf"):
        alternatives = schema.get(key)
        typed = ("type", "enum", "const")
        if isinstance(alternatives, list) and all(
            isinstance(a, Mapping) and any(t in a for t in typed) for a in alternatives
        ):
            parts = [
                type_expression(a, namer=namer, path=(*path, f"Option{i}"))
                for i, a in enumerate(alternatives, 1)
            ]
            return " | ".join(dict.fromkeys(parts)) or "Any"
    if isinstance(schema.get("properties"), Mapping):
        return _single(schema, "object", namer, path)
    return "Any"


def _single(
    schema: Mapping[str, Any], kind: str, namer: ObjectNamer | None, path: tuple[str, ...]
) -> str:
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        items = schema.get("items")
        return f"list[{type_expression(items, namer=namer, path=(*path, 'Item'))}]"
    if kind == "object":
        properties = schema.get("properties")
        if isinstance(properties, Mapping) and properties and namer is not None:
            return namer(schema, path)
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping) and extra:
            return f"dict[str, {type_expression(extra, namer=namer, path=(*path, 'Value'))}]"
        return "dict[str, Any]"
    return "Any"


def _doc_type(schema: object) -> str:
    """The type shown to people: objects are ``dict``, their fields listed apart."""
    return type_expression(schema, namer=lambda _schema, _path: "dict")


@dataclass(frozen=True, slots=True)
class Field:
    """One parameter or output field: name (a path for nested ones), type, rules."""

    name: str
    type: str
    required: bool
    description: str = ""
    default: Any = _NO_DEFAULT
    constraints: Mapping[str, Any] = field(default_factory=dict)
    input_key: str | None = None

    @property
    def has_default(self) -> bool:
        """True when the schema gives a default."""
        return self.default is not _NO_DEFAULT

    def to_json(self) -> dict[str, Any]:
        """The field as JSON data (``default`` only when there is one)."""
        data: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        if self.input_key is not None and self.input_key != self.name:
            data["property"] = self.input_key
        if self.has_default:
            data["default"] = self.default
        data["description"] = self.description
        data["constraints"] = dict(self.constraints)
        return data

    def lines(self) -> list[str]:
        """``name (type, required|default ...|optional)``, then description and rules."""
        status = (
            "required"
            if self.required
            else f"default {self.default!r}"
            if self.has_default
            else "optional"
        )
        renamed = (
            f", input '{self.input_key}'"
            if self.input_key is not None and self.input_key != self.name
            else ""
        )
        lines = [f"{self.name} ({self.type}, {status}{renamed})"]
        if self.description:
            lines.append(f"    {self.description}")
        rules = [_rule_text(k, v) for k, v in self.constraints.items()]
        rules = [r for r in rules if r]
        if rules:
            lines.append(f"    {'; '.join(rules)}")
        return lines


def _rule_text(key: str, value: Any) -> str:
    if key == "enum":
        return ""  # the type says it: Literal[...]
    if key == "additionalProperties":
        return "no other keys" if value is False else ""
    if key in ("anyOf", "oneOf") and isinstance(value, list):
        names = [n for a in value if isinstance(a, Mapping) for n in a.get("required", [])]
        if names and all(isinstance(a, Mapping) and set(a) == {"required"} for a in value):
            quantity = "at least one" if key == "anyOf" else "exactly one"
            return f"{quantity} of {', '.join(repr(n) for n in names)} is required"
        return f"{key}: {len(value)} alternatives"
    return f"{key} {value!r}" if isinstance(value, str) else f"{key} {value}"


def _constraints(schema: Mapping[str, Any]) -> dict[str, Any]:
    found = {k: schema[k] for k in _CONSTRAINTS if k in schema}
    if isinstance(found.get("additionalProperties"), Mapping):
        del found["additionalProperties"]  # the type says it: dict[str, ...]
    return found


def _nested(schema: Mapping[str, Any], prefix: str) -> list[Field]:
    """Fields of an object (``prefix.key``) or of an array's objects (``prefix[].key``)."""
    if schema.get("type") == "array" and isinstance(schema.get("items"), Mapping):
        return _nested(schema["items"], f"{prefix}[]")
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return []
    required = set(schema.get("required", []))
    found: list[Field] = []
    for key, sub in properties.items():
        sub = sub if isinstance(sub, Mapping) else {}
        found.extend(_field_and_nested(f"{prefix}.{key}" if prefix else key, key in required, sub))
    return found


def _field_and_nested(name: str, required: bool, schema: Mapping[str, Any]) -> list[Field]:
    own = Field(
        name=name,
        type=_doc_type(schema),
        required=required,
        description=str(schema.get("description", "")),
        default=schema.get("default", _NO_DEFAULT),
        constraints=_constraints(schema),
    )
    return [own, *_nested(schema, name)]


def _parameters(input_schema: Mapping[str, Any]) -> list[Field]:
    found: list[Field] = []
    for name, prop, sub, required in task_parameters(input_schema):
        found.append(
            Field(
                name=name,
                type=_doc_type(sub),
                required=required,
                description=str(sub.get("description", "")),
                default=sub.get("default", _NO_DEFAULT),
                constraints=_constraints(sub),
                input_key=prop,
            )
        )
        found.extend(_nested(sub, name))
    found.append(Field("instance", "str | IntegrationInstance", False, INSTANCE_DOC))
    return found


def describe_method(integration_id: str, method: Mapping[str, Any]) -> dict[str, Any]:
    """A method as JSON data: its task, parameters, input rules and output fields."""
    input_schema = method.get("inputSchema")
    input_schema = input_schema if isinstance(input_schema, Mapping) else {}
    output_schema = method.get("outputSchema")
    output_schema = output_schema if isinstance(output_schema, Mapping) else {}
    rules = {k: v for k, v in _constraints(input_schema).items() if k in ("anyOf", "oneOf")}
    return {
        "id": method.get("id"),
        "task": f"{integration_id}.{method.get('id')}",
        "name": method.get("name", ""),
        "description": method.get("description", ""),
        "requiredScopes": list(method.get("requiredScopes", [])),
        "parameters": [f.to_json() for f in _parameters(input_schema)],
        "inputRules": rules,
        "output": {
            "type": _doc_type(output_schema),
            "fields": [f.to_json() for f in _nested(output_schema, "")],
        },
    }


def method_doc(integration_id: str, method: Mapping[str, Any]) -> str:
    """The text of a method: description, parameters, input rules, output fields."""
    input_schema = method.get("inputSchema")
    input_schema = input_schema if isinstance(input_schema, Mapping) else {}
    output_schema = method.get("outputSchema")
    output_schema = output_schema if isinstance(output_schema, Mapping) else {}
    lines = [str(method.get("description") or method.get("name") or method.get("id")), ""]
    lines.append("Parameters (keyword-only):")
    lines.extend(f"    {line}" for f in _parameters(input_schema) for line in f.lines())
    rules = [
        _rule_text(k, v) for k, v in _constraints(input_schema).items() if k in ("anyOf", "oneOf")
    ]
    if rules:
        lines += ["", "Input rules:", *(f"    {r}" for r in rules)]
    lines += ["", f"Returns ({_doc_type(output_schema)}):"]
    output = _nested(output_schema, "")
    lines.extend(f"    {line}" for f in output for line in f.lines())
    if not output:
        lines.append("    (no declared fields)")
    scopes = method.get("requiredScopes")
    if scopes:
        lines += ["", f"Required scopes: {', '.join(str(s) for s in scopes)}"]
    lines += ["", f"Task: {integration_id}.{method.get('id')}"]
    return "\n".join(lines)
