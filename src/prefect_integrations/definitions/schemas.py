"""The JSON Schemas embedded in a definition: checking them and compiling their validators.

Every ``configSchema``, ``inputSchema`` and ``outputSchema`` is a draft 2020-12 JSON Schema.
`check_schema` checks one (remembering the outcome per distinct schema text, since
checking is most of a registry load); `compile_validator` builds its reusable validator
once; `raise_first_error` raises `ValidationError` with the most relevant error and
`reason` describes a schema error for people.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

from jsonschema import Draft202012Validator
from jsonschema import ValidationError as SchemaValidationError
from jsonschema.exceptions import SchemaError, best_match

from prefect_integrations.exceptions import ValidationError

__all__ = ["check_schema", "compile_validator", "raise_first_error", "reason"]

_JsonPath = tuple[str | int, ...]


def compile_validator(schema: Mapping[str, Any]) -> Draft202012Validator:
    """Build the reusable validator of an embedded schema that already passed check_schema."""
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def reason(error: SchemaValidationError) -> str:
    """Describe a schema error, spelling out alternatives (anyOf/oneOf).

    `best_match` stops at an ``anyOf``/``oneOf`` error when its alternatives are equally
    relevant; jsonschema's message then repeats the whole value, so name the rule instead.
    """
    if error.validator in ("anyOf", "oneOf") and error.context:
        direct = [e for e in error.context if not e.path]
        if direct and all(e.validator == "required" for e in direct):
            names = list(
                dict.fromkeys(str(n) for e in direct for n in cast("list[str]", e.validator_value))
            )
            quantity = "at least one" if error.validator == "anyOf" else "exactly one"
            listed = ", ".join(f"'{n}'" for n in names)
            return f"{quantity} of {listed} is required"
        if error.validator == "anyOf":
            return "does not match any of the allowed alternatives"
        return "does not match exactly one of the allowed alternatives"
    return error.message


def raise_first_error(validator: Draft202012Validator, value: object, subject: str) -> None:
    """Raise `ValidationError` with the most relevant error of ``value``, if any."""
    error = best_match(validator.iter_errors(value))
    if error is not None:
        raise ValidationError(subject, list(error.absolute_path), reason(error))


_JSON_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")


def _schema_error_message(error: SchemaError) -> str:
    """Describe a SchemaError, more specifically than jsonschema where it is vague."""
    path = list(error.absolute_path)
    if error.validator == "anyOf" and path and path[-1] == "type":
        return f"{error.instance!r} is not a JSON Schema type ({', '.join(_JSON_TYPES)})"
    return error.message


_SchemaCheck = tuple[_JsonPath, str] | None
_SCHEMA_CHECKS: dict[str, _SchemaCheck] = {}
_SCHEMA_CHECKS_MAX = 4096


def _check_schema_uncached(schema: Mapping[str, Any]) -> _SchemaCheck:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return tuple(exc.absolute_path), _schema_error_message(exc)
    return None


def check_schema(schema: Mapping[str, Any]) -> _SchemaCheck:
    """``Draft202012Validator.check_schema``, remembered per distinct schema text.

    check_schema costs about 0.25 ms per subschema, most of a registry load; remembering
    the outcome makes every later load in the process (CLI, tasks, maintenance) cheap.
    """
    try:
        key = json.dumps(schema, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return _check_schema_uncached(schema)  # not plain JSON data: do not remember
    if key in _SCHEMA_CHECKS:
        return _SCHEMA_CHECKS[key]
    outcome = _check_schema_uncached(schema)
    if len(_SCHEMA_CHECKS) >= _SCHEMA_CHECKS_MAX:
        _SCHEMA_CHECKS.clear()
    _SCHEMA_CHECKS[key] = outcome
    return outcome
