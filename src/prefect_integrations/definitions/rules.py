"""The rules of a definition document: the meta-schema and the checks it cannot express.

`validate_document` checks one parsed document against the meta-schema
(``schemas/definition.schema.json``) and the rules the meta-schema cannot express (valid
embedded JSON Schemas, unique method ids, ``oauth2Config`` exactly for ``oauth2``, required
scopes requested, bindings matching ``authType``, health check and rotation methods known
and callable, templates compiling). Problems are collected, never reported one at a time;
each names its source and a JSON path such as ``$.methods[1].inputSchema.properties.x``.

Checking and compiling the embedded JSON Schemas themselves is in
`prefect_integrations.definitions.schemas`.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema import ValidationError as SchemaValidationError
from jsonschema.exceptions import best_match

from prefect_integrations.definitions.bindings import compile_definition
from prefect_integrations.definitions.schemas import check_schema, compile_validator, reason
from prefect_integrations.exceptions import DefinitionProblem, quote
from prefect_integrations.validation import storable_problem

__all__ = [
    "JsonPath",
    "json_type",
    "meta_schema",
    "path_key",
    "problem",
    "validate_document",
]

_META_SCHEMA_RESOURCE = ("schemas", "definition.schema.json")
JsonPath = tuple[str | int, ...]


@cache
def _meta_schema() -> dict[str, Any]:
    resource = resources.files("prefect_integrations").joinpath(*_META_SCHEMA_RESOURCE)
    loaded: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return loaded


def meta_schema() -> dict[str, Any]:
    """Return a copy of the definition meta-schema (``schemas/definition.schema.json``)."""
    return copy.deepcopy(_meta_schema())


@cache
def _meta_validator() -> Draft202012Validator:
    return Draft202012Validator(_meta_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def path_key(path: JsonPath) -> tuple[tuple[int, int, str], ...]:
    """Sort key of a JSON path: indexes in numeric order, before names."""
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, part) for part in path)


def problem(source: str, path: Sequence[str | int], message: str) -> DefinitionProblem:
    """The `DefinitionProblem` at ``path`` of the document from ``source``."""
    return DefinitionProblem(source=source, path=path, message=message)


def _meta_error_problems(error: SchemaValidationError, source: str) -> list[DefinitionProblem]:
    """Turn one meta-schema error into problems with messages a person can act on."""
    best = best_match([error])
    if best is None:  # pragma: no cover - best_match of a non-empty list is never None
        best = error
    path: JsonPath = tuple(best.absolute_path)
    instance = best.instance
    schema = best.schema if isinstance(best.schema, dict) else {}

    if best.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = list(schema.get("properties", {}))
        out = []
        for key in instance:
            if key in allowed:
                continue
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            if not path and key == "id" and "integrationId" in allowed:
                hint = ["integrationId"]  # the name before the specification's
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            out.append(
                problem(
                    source,
                    (*path, key),
                    f"unknown field {quote(str(key))}{suggestion} (allowed: {', '.join(allowed)})",
                )
            )
        if out:
            return out
    if best.validator == "pattern" and isinstance(instance, str) and path:
        if path == ("version",):
            message = (
                f"{instance!r} is not a semantic version "
                "(MAJOR.MINOR.PATCH[-prerelease][+build], see https://semver.org)"
            )
            return [problem(source, path, message)]
        if schema == _meta_schema()["$defs"]["httpUrl"]:
            return [problem(source, path, f"{instance!r} is not an absolute http(s) URL")]
        if schema == _meta_schema()["$defs"]["scope"]:
            message = f"{instance!r} is not a single scope (list each scope as its own item)"
            return [problem(source, path, message)]
        if path[-1] in ("id", "integrationId"):
            message = (
                f"{instance!r} is not a valid id "
                "(lowercase letters, digits and '_', starting with a letter)"
            )
            return [problem(source, path, message)]
    return [problem(source, path, reason(best))]


def _embedded_schemas(document: Mapping[str, Any]) -> Iterator[tuple[JsonPath, object]]:
    """Yield (location, schema) of every embedded JSON Schema present in the document."""
    if "configSchema" in document:
        yield ("configSchema",), document["configSchema"]
    methods = document.get("methods")
    if isinstance(methods, list):
        for index, method in enumerate(methods):
            if isinstance(method, dict):
                for key in ("inputSchema", "outputSchema"):
                    if key in method:
                        yield ("methods", index, key), method[key]


_DRAFT_2020_12_URIS = frozenset(
    {
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2020-12/schema#",
    }
)


def _rule_problems(document: Mapping[str, Any], source: str) -> list[DefinitionProblem]:
    """Check the rules the meta-schema does not express."""
    problems: list[DefinitionProblem] = []

    # Every embedded schema must itself be a valid JSON Schema.
    for location, schema in _embedded_schemas(document):
        if not isinstance(schema, dict):
            continue  # reported by the meta-schema
        declared = schema.get("$schema")
        if declared is not None and declared not in _DRAFT_2020_12_URIS:
            problems.append(
                problem(
                    source,
                    (*location, "$schema"),
                    f"unsupported dialect {declared!r}: embedded schemas are draft 2020-12 "
                    "(omit $schema or use 'https://json-schema.org/draft/2020-12/schema')",
                )
            )
        error = check_schema(schema)
        if error is not None:
            error_path, message = error
            problems.append(
                problem(source, (*location, *error_path), f"invalid JSON Schema: {message}")
            )

    # Patterns end in '$', which Python's re also matches before a final line break.
    methods = document.get("methods")
    names: list[tuple[JsonPath, object]] = [(("integrationId",), document.get("integrationId"))]
    names.append((("version",), document.get("version")))
    if isinstance(methods, list):
        names.extend(
            (("methods", i, "id"), m.get("id"))
            for i, m in enumerate(methods)
            if isinstance(m, dict)
        )
    for location, value in names:
        if isinstance(value, str) and value.endswith("\n"):
            problems.append(problem(source, location, f"{value!r} ends with a line break"))

    # Method ids unique within the definition.
    if isinstance(methods, list):
        seen: dict[str, int] = {}
        for index, method in enumerate(methods):
            if not isinstance(method, dict) or not isinstance(method.get("id"), str):
                continue
            method_id = method["id"]
            if method_id in seen:
                problems.append(
                    problem(
                        source,
                        ("methods", index, "id"),
                        f"duplicate method id '{method_id}' "
                        f"(first at $.methods[{seen[method_id]}])",
                    )
                )
            else:
                seen[method_id] = index

    # oauth2Config present exactly when authType is oauth2.
    auth_type = document.get("authType")
    has_oauth2 = "oauth2Config" in document
    if auth_type == "oauth2" and not has_oauth2:
        problems.append(problem(source, ("oauth2Config",), "required when authType is 'oauth2'"))
    elif auth_type in ("apikey", "custom") and has_oauth2:
        problems.append(
            problem(
                source,
                ("oauth2Config",),
                f"not allowed when authType is '{auth_type}' (only with 'oauth2')",
            )
        )

    # A method may only need scopes that the authorization requests.
    oauth2 = document.get("oauth2Config")
    if auth_type == "oauth2" and isinstance(oauth2, dict) and isinstance(methods, list):
        requested = oauth2.get("scopes")
        if isinstance(requested, list):
            for index, method in enumerate(methods):
                scopes = method.get("requiredScopes") if isinstance(method, dict) else None
                if not isinstance(scopes, list):
                    continue
                for position, scope in enumerate(scopes):
                    if isinstance(scope, str) and scope not in requested:
                        problems.append(
                            problem(
                                source,
                                ("methods", index, "requiredScopes", position),
                                f"scope '{scope}' is not requested in oauth2Config.scopes",
                            )
                        )
    return problems


def _binding_rule_problems(document: Mapping[str, Any], source: str) -> list[DefinitionProblem]:
    """Check the binding rules the meta-schema does not express, and compile the templates."""
    problems: list[DefinitionProblem] = []
    methods = document.get("methods")
    method_list = [m for m in methods if isinstance(m, dict)] if isinstance(methods, list) else []

    # Each method is bound at most once: declaratively ('http') or by a handler. A method
    # with neither (as in the specification's own example) is listed but not callable.
    any_http = False
    for index, method in enumerate(methods if isinstance(methods, list) else []):
        if not isinstance(method, dict):
            continue
        has_http, has_handler = "http" in method, "handler" in method
        any_http = any_http or has_http
        if has_http and has_handler:
            message = "'http' and 'handler' are mutually exclusive (use one)"
            problems.append(problem(source, ("methods", index), message))
        http = method.get("http")
        body = http.get("body") if isinstance(http, dict) else None
        if isinstance(body, dict):
            location: JsonPath = ("methods", index, "http", "body")
            kinds = [kind for kind in ("json", "form", "raw") if kind in body]
            if len(kinds) != 1:
                problems.append(
                    problem(source, location, "exactly one of 'json', 'form' or 'raw' is required")
                )
            if "contentType" in body and "raw" not in body:
                problems.append(
                    problem(source, (*location, "contentType"), "only allowed with 'raw'")
                )
            if http.get("method") == "GET":  # type: ignore[union-attr]
                problems.append(problem(source, location, "a GET request has no body"))
    if "baseUrl" not in document and any_http:
        problems.append(
            problem(source, ("baseUrl",), "required when a method has an 'http' binding")
        )
    bound = {
        m["id"]
        for m in method_list
        if isinstance(m.get("id"), str) and ("http" in m or "handler" in m)
    }

    # Credential placement must match authType.
    auth_type = document.get("authType")
    auth = document.get("auth")
    if isinstance(auth, dict):
        if "apikey" in auth and auth_type != "apikey":
            problems.append(
                problem(
                    source,
                    ("auth", "apikey"),
                    f"only allowed when authType is 'apikey' (authType is {auth_type!r})",
                )
            )
        if "custom" in auth and auth_type != "custom":
            problems.append(
                problem(
                    source,
                    ("auth", "custom"),
                    f"only allowed when authType is 'custom' (authType is {auth_type!r})",
                )
            )
    if auth_type == "custom" and not (isinstance(auth, dict) and "custom" in auth):
        problems.append(problem(source, ("auth", "custom"), "required when authType is 'custom'"))

    # The health check names a method of this definition with inputs valid for it.
    health = document.get("healthCheck")
    if isinstance(health, dict) and isinstance(health.get("method"), str):
        by_id = {m["id"]: m for m in method_list if isinstance(m.get("id"), str)}
        target = by_id.get(health["method"])
        if target is None:
            known = ", ".join(str(m.get("id")) for m in method_list) or "none"
            problems.append(
                problem(
                    source,
                    ("healthCheck", "method"),
                    f"unknown method '{health['method']}' (known: {known})",
                )
            )
        elif health["method"] not in bound:
            problems.append(
                problem(
                    source,
                    ("healthCheck", "method"),
                    f"method '{health['method']}' is not callable (it has no 'http' or "
                    "'handler' binding)",
                )
            )
        else:
            schema = target.get("inputSchema")
            value = health.get("input", {})
            if (
                isinstance(schema, dict)
                and isinstance(value, dict)
                and check_schema(schema) is None
            ):
                error = best_match(compile_validator(schema).iter_errors(value))
                if error is not None:
                    problems.append(
                        problem(
                            source,
                            ("healthCheck", "input", *error.absolute_path),
                            f"not a valid input of method '{health['method']}': {reason(error)}",
                        )
                    )

    # Credential rotation needs an apikey definition, a health check and known methods.
    rotation = document.get("credentialRotation")
    if isinstance(rotation, dict):
        known_ids = {m["id"] for m in method_list if isinstance(m.get("id"), str)}
        if auth_type != "apikey":
            problems.append(
                problem(
                    source,
                    ("credentialRotation",),
                    f"only supported for authType 'apikey' (authType is {auth_type!r})",
                )
            )
        if not isinstance(health, dict):
            problems.append(
                problem(
                    source, ("credentialRotation",), "needs a healthCheck to verify the new key"
                )
            )
        for step in ("create", "revoke"):
            method_id = rotation.get(step)
            if isinstance(method_id, str) and method_id not in known_ids:
                problems.append(
                    problem(source, ("credentialRotation", step), f"unknown method '{method_id}'")
                )
            elif isinstance(method_id, str) and method_id not in bound:
                problems.append(
                    problem(
                        source,
                        ("credentialRotation", step),
                        f"method '{method_id}' is not callable (it has no 'http' or 'handler' "
                        "binding)",
                    )
                )

    # Templates compile and use known variables; handlers import.
    _, _, compile_problems = compile_definition(document)
    problems.extend(problem(source, path, message) for path, message in compile_problems)
    return problems


def validate_document(document: object, *, source: str) -> list[DefinitionProblem]:
    """Return every problem of a parsed definition document (``[]`` if it is valid).

    Checks that it is plain JSON data nested at most
    `~prefect_integrations.validation.MAX_DEPTH` deep that PostgreSQL can store (no NUL
    character or lone surrogate in any string or key), the meta-schema (all errors, sorted
    by path), that each embedded schema is a valid draft 2020-12 JSON Schema, that method
    ids are unique, that ``oauth2Config`` is present
    exactly when ``authType`` is ``oauth2``, that required scopes are requested, and the
    bindings: at most one of ``http``/``handler`` per method, ``baseUrl`` when one is ``http``,
    ``auth`` matching ``authType``, the health check's method and inputs, every template
    compiling (with known variables) and every handler importing.
    """
    if not isinstance(document, dict):
        return [problem(source, (), f"top level must be a JSON object, not {json_type(document)}")]
    # e.g. nested too deeply to validate without overflow, or text PostgreSQL cannot store
    unusable = storable_problem(document)
    if unusable is not None:
        return [problem(source, *unusable)]
    problems: list[DefinitionProblem] = []
    for error in _meta_validator().iter_errors(document):
        problems.extend(_meta_error_problems(error, source))
    problems.extend(_rule_problems(document, source))
    problems.extend(_binding_rule_problems(document, source))
    problems.sort(key=lambda p: (path_key(p.path), p.message))
    return problems


def json_type(value: object) -> str:
    """The JSON type of ``value`` as a phrase ("an array"), for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
