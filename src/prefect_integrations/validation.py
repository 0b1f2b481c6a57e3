"""JSON Schema checks shared by the registry and the store.

Schemas are compiled once; a failure raises `ValidationError` with the most relevant
error (`jsonschema.exceptions.best_match`) and its JSON path. Messages describe the rule
broken and never echo the rejected value when it may be secret.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaViolation
from jsonschema.exceptions import best_match

from prefect_integrations.exceptions import ValidationError

__all__ = [
    "MAX_DEPTH",
    "check_json",
    "check_storable",
    "compile_schema",
    "credentials_validator",
    "first_error",
    "json_problem",
    "load_packaged_schema",
    "status_validator",
    "storable_problem",
    "validate",
]


def compile_schema(schema: dict[str, Any]) -> Draft202012Validator:
    """Compile a (checked) JSON Schema into a reusable validator that checks formats."""
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def first_error(validator: Draft202012Validator, value: object) -> SchemaViolation | None:
    """The most relevant violation of ``value``, or None when it is valid."""
    error: SchemaViolation | None = best_match(validator.iter_errors(value))
    return error


def _reason(error: SchemaViolation, *, secret: bool) -> str:
    if not secret:
        return error.message
    # Describe the rule, not the value: the value may be a credential.
    if error.validator in ("required", "dependentRequired"):
        return error.message  # names properties of the schema only
    if error.validator in ("anyOf", "oneOf") and isinstance(error.schema, dict):
        described = error.schema.get("description")
        if isinstance(described, str):  # say what is expected, not the schema's JSON
            return f"must be {described[0].lower()}{described[1:].rstrip('.')}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = sorted(repr(k) for k in error.instance if k not in allowed)
        return f"unexpected propert{'y' if len(extra) == 1 else 'ies'} {', '.join(extra)}"
    expected = json.dumps(error.validator_value, default=str)
    if len(expected) > 120:
        expected = expected[:117] + "..."
    return f"does not satisfy '{error.validator}': {expected}"


def validate(
    validator: Draft202012Validator, value: object, *, subject: str, secret: bool = False
) -> None:
    """Raise `ValidationError` naming ``subject`` and the JSON path when ``value`` is invalid.

    With ``secret=True`` the message never includes the offending value. Anything but plain
    JSON data is refused first (`check_json`).
    """
    check_json(value, subject=subject)
    error = first_error(validator, value)
    if error is not None:
        raise ValidationError(subject, list(error.absolute_path), _reason(error, secret=secret))


#: Deepest nesting of objects and arrays accepted in a value (inputs, config, credentials).
MAX_DEPTH = 100
#: Largest integer accepted, in bits (Python refuses to print integers of 4300+ digits).
_MAX_INT_BITS = 4096


def json_problem(value: object) -> tuple[list[str | int], str] | None:
    """The path and problem of the first part of ``value`` that is not plain JSON data.

    Plain JSON data is dicts with string keys, lists, strings, booleans, None, integers of
    sane size and finite floats, nested at most `MAX_DEPTH` deep. Walked without recursion,
    so any depth is reported rather than overflowing the stack.
    """
    stack: list[tuple[object, list[str | int]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if item is None or isinstance(item, str | bool):
            continue
        if isinstance(item, int):
            if item.bit_length() > _MAX_INT_BITS:
                return path, f"integer too large (more than {_MAX_INT_BITS} bits)"
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return path, f"{item!r} is not a JSON number"
            continue
        if not isinstance(item, dict | list):
            return path, f"a {type(item).__name__} is not a JSON value"
        if len(path) >= MAX_DEPTH:
            return path, f"nested too deeply (more than {MAX_DEPTH} levels)"
        children: list[tuple[object, list[str | int]]] = []
        if isinstance(item, list):
            children.extend((child, [*path, index]) for index, child in enumerate(item))
        else:
            for key, child in item.items():
                if not isinstance(key, str):
                    return path, f"has a {type(key).__name__} key; JSON keys are strings"
                children.append((child, [*path, key]))
        stack.extend(reversed(children))
    return None


def check_json(value: object, *, subject: str) -> None:
    """Refuse anything but plain JSON data (NaN, bytes, sets...), naming the JSON path."""
    problem = json_problem(value)
    if problem is not None:
        raise ValidationError(subject, *problem)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable(text: str) -> str | None:
    """Why PostgreSQL cannot store ``text`` in jsonb, or None."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000)"
    return "contains a lone surrogate (an invalid \\ud800-\\udfff escape), not Unicode text"


def _unstorable_path(value: object, path: list[str | int]) -> tuple[list[str | int], str] | None:
    """The path of the first string or key PostgreSQL cannot store, and why."""
    if isinstance(value, str):
        reason = _unstorable(value)
        return (path, reason) if reason else None
    if isinstance(value, dict):
        for key, item in value.items():
            reason = _unstorable(str(key))
            if reason:
                return [*path, str(key)], f"the key {reason}"
            found = _unstorable_path(item, [*path, str(key)])
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _unstorable_path(item, [*path, index])
            if found is not None:
                return found
    return None


def storable_problem(value: object) -> tuple[list[str | int], str] | None:
    """The path and problem of the first part of ``value`` PostgreSQL cannot store as jsonb.

    That is anything `json_problem` reports, and strings (or keys) with a NUL character or
    a lone UTF-16 surrogate; None when ``value`` is storable.
    """
    return json_problem(value) or _unstorable_path(value, [])


def check_storable(value: object, *, subject: str) -> None:
    r"""Refuse what PostgreSQL cannot store as jsonb, naming the JSON path.

    That is anything `check_json` refuses, and strings (or keys) with a NUL character or
    a lone UTF-16 surrogate (JSON's ``\ud800`` without its pair), which PostgreSQL
    refuses when it reads the text back as jsonb.
    """
    check_json(value, subject=subject)
    found = _unstorable_path(value, [])
    if found is not None:
        raise ValidationError(subject, *found)


@cache
def load_packaged_schema(name: str) -> dict[str, Any]:
    """Load one of the JSON Schemas shipped in ``prefect_integrations/schemas``."""
    text = resources.files("prefect_integrations").joinpath("schemas", name).read_text()
    schema: dict[str, Any] = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return schema


@cache
def credentials_validator(auth_type: str) -> Draft202012Validator:
    """Validator of plaintext credentials for one ``authType`` (oauth2, apikey, custom)."""
    schema = load_packaged_schema("credentials.schema.json")
    variant = {"$ref": f"#/$defs/{auth_type}", "$defs": schema["$defs"]}
    return compile_schema(variant)


@cache
def status_validator() -> Draft202012Validator:
    """Validator of an instance's ``status`` document."""
    return compile_schema(load_packaged_schema("status.schema.json"))
