"""Helpers of the OpenAPI tests: imports with the shipped overlays, example values.

`example` builds one deterministic value valid for a JSON Schema (every property of an
object, the first branch of a choice, the first enum value), for requests built from a
method's ``inputSchema`` and responses built from a description's schema.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import find
from hypothesis import strategies as st

from prefect_integrations.openapi import import_openapi, load_overlay

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ROOT / "definitions" / "overlays"
SPECS = ROOT.parent / "shared" / "specs"

_FORMATS = {
    "uuid": "0f8fad5b-d9cb-469f-a165-70867728950e",
    "date": "2024-03-15",
    "date-time": "2024-03-15T10:00:00Z",
    "email": "ann@example.com",
    "uri": "https://example.com/x",
    "url": "https://example.com/x",
}
_PATTERNED = [
    "1234567890.123456",  # Slack's ts
    *(f"{letter}0123456789AB" for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"),  # Slack's ids
    "USD",
    "public_channel",
    "x",
]


def import_with_overlay(integration: str, spec: str) -> dict[str, Any]:
    """The description imported as the overlay of ``integration`` says."""
    overlay = load_overlay(OVERLAYS / f"{integration}.overlay.json")
    settings = overlay.settings
    result = import_openapi(
        SPECS / spec,
        integration_id=integration,
        operations=settings["operations"],
        omit_headers=settings.get("omitHeaders", ()),
        omit_parameters=settings.get("omitParameters", ()),
        max_depth=settings["maxDepth"],
        overlay=overlay,
    )
    return result.document


def _string(schema: dict[str, Any]) -> str:
    if schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        for candidate in _PATTERNED:
            if re.search(pattern, candidate):
                return candidate
        return _simplest_match(pattern)
    return "x" * max(1, int(schema.get("minLength", 1)))


@cache
def _simplest_match(pattern: str) -> str:
    """The simplest text matching ``pattern`` (hypothesis shrinks to it: deterministic)."""
    found: str = find(st.from_regex(pattern), lambda _: True)
    return found


def _number(schema: dict[str, Any], integral: bool) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
    value: int | float = (int(low) + 1) if integral else float(low) + 1.5
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if high is not None and value > high:
        value = int(high) if integral else float(high)
    return value


def example(schema: Any, depth: int = 0) -> Any:
    """One value valid for ``schema`` (see the module docstring)."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list):
        return next((v for v in schema["enum"] if v is not None), None)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            branches = [b for b in schema[key] if b.get("type") != "null"] or schema[key]
            return example({**{k: v for k, v in schema.items() if k != key}, **branches[0]}, depth)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {}
        for branch in schema["allOf"]:
            value = example(branch, depth)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return True
    if kind == "array":
        return [example(schema.get("items", {}), depth + 1)] * max(1, schema.get("minItems", 1))
    if kind == "object":
        required = set(schema.get("required", []))
        return {
            name: example(prop, depth + 1)
            for name, prop in (schema.get("properties") or {}).items()
            if depth < 6 or name in required
        }
    return "x" if kind is None else None


_PARAMETER_KEYS = ("type", "format", "items", "enum", "default", "minimum", "maximum", "pattern")


def _parameter_schema(parameter: dict[str, Any]) -> dict[str, Any]:
    return {k: parameter[k] for k in _PARAMETER_KEYS if k in parameter}


def swagger2_requests_as_openapi3(document: dict[str, Any]) -> dict[str, Any]:
    """The request side of a Swagger 2.0 description in OpenAPI 3.0 form, for openapi-core.

    Parameters get a ``schema``; ``body`` and ``formData`` parameters become a
    ``requestBody`` in each media type of ``consumes``; ``host``/``basePath`` a server.
    Responses are left out (the output checks read the description through the importer),
    schemas stay under ``definitions`` where their references point.
    """
    server = f"https://{document['host']}{document.get('basePath', '')}"
    paths: dict[str, Any] = {}
    for path, item in document["paths"].items():
        for verb, operation in item.items():
            parameters, fields, required, body = [], {}, [], None
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "formData":
                    fields[parameter["name"]] = _parameter_schema(parameter)
                    if parameter.get("required"):
                        required.append(parameter["name"])
                elif parameter["in"] == "body":
                    body = parameter["schema"]
                else:
                    converted = {k: parameter[k] for k in ("name", "in") if k in parameter}
                    converted["required"] = bool(parameter.get("required"))
                    converted["schema"] = _parameter_schema(parameter)
                    parameters.append(converted)
            converted_op: dict[str, Any] = {
                "parameters": parameters,
                "responses": {"200": {"description": "not converted"}},
            }
            if fields or body is not None:
                schema = body or {"type": "object", "properties": fields, "required": required}
                if not schema.get("required"):
                    schema.pop("required", None)
                media = operation.get("consumes", document.get("consumes", ["application/json"]))
                converted_op["requestBody"] = {"content": {m: {"schema": schema} for m in media}}
            paths.setdefault(path, {})[verb] = converted_op
    return {
        "openapi": "3.0.3",
        "info": document["info"],
        "servers": [{"url": server}],
        "paths": paths,
        "definitions": document.get("definitions", {}),
    }
