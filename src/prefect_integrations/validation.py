"""JSON Schema checks shared by the registry and the store.

Schemas are compiled once; a failure raises `ValidationError` with the most relevant
error (`jsonschema.exceptions.best_match`) and its JSON path. Messages describe the rule
broken and never echo the rejected value when it may be secret.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaViolation
from jsonschema.exceptions import best_match

from prefect_integrations.exceptions import ValidationError

__all__ = [
    "check_storable",
    "compile_schema",
    "credentials_validator",
    "first_error",
    "load_packaged_schema",
    "status_validator",
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
    if error.validator == "required":
        return error.message
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

    With ``secret=True`` the message never includes the offending value.
    """
    error = first_error(validator, value)
    if error is not None:
        raise ValidationError(subject, list(error.absolute_path), _reason(error, secret=secret))


def _nul_path(value: object, path: list[str | int]) -> list[str | int] | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in str(key):
                return [*path, str(key)]
            found = _nul_path(item, [*path, str(key)])
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, [*path, index])
            if found is not None:
                return found
    return None


def check_storable(value: object, *, subject: str) -> None:
    """Refuse strings PostgreSQL cannot store (NUL characters), naming the JSON path."""
    path = _nul_path(value, [])
    if path is not None:
        raise ValidationError(subject, path, "contains a NUL character (\\u0000)")


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
