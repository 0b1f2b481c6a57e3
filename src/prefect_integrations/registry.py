"""Load, validate and look up integration definitions.

A definition is a JSON file (``definitions/<id>.json``) describing one integration: how it
authenticates and which methods it offers, each with an input and an output JSON Schema.
This module checks definition files against the meta-schema
(``schemas/definition.schema.json``) and the rules the meta-schema cannot express, and
compiles every embedded JSON Schema and every HTTP binding template (`binding`) once, so
that callers validate values with ready validators and build requests without compiling:

    registry = load_registry()
    method = registry.get("xero").method("create_invoice")
    method.validate_input({"contact_id": ..., "line_items": [...]})

Problems are collected, never reported one at a time: `collect` returns every problem of
every file, `load_registry` raises one `DefinitionError` listing them all. Each problem
names the file and a JSON path such as ``$.methods[1].inputSchema.properties.x``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from jsonschema import Draft202012Validator
from jsonschema import ValidationError as SchemaValidationError
from jsonschema.exceptions import SchemaError, best_match

from prefect_integrations._resources import bundled_path
from prefect_integrations.binding import (
    ApiKeyPlacement,
    CustomAuth,
    DefinitionBinding,
    HealthCheck,
    HttpBinding,
    MethodBinding,
    MethodHandler,
    compile_definition,
)
from prefect_integrations.exceptions import (
    DefinitionError,
    DefinitionProblem,
    MethodNotBound,
    UnknownIntegration,
    ValidationError,
    quote,
)
from prefect_integrations.validation import check_json, json_problem

__all__ = [
    "AuthType",
    "Definition",
    "Method",
    "Registry",
    "collect",
    "collect_layered",
    "load_document",
    "load_registry",
    "meta_schema",
    "shipped_definitions_dir",
    "validate_document",
]

AuthType = Literal["oauth2", "apikey", "custom"]

_META_SCHEMA_RESOURCE = ("schemas", "definition.schema.json")
_IDENTIFIER_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_JsonPath = tuple[str | int, ...]


# --------------------------------------------------------------------------------------
# Compiled validators
# --------------------------------------------------------------------------------------


def _compile(schema: Mapping[str, Any]) -> Draft202012Validator:
    """Build the reusable validator of an embedded schema that already passed check_schema."""
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _reason(error: SchemaValidationError) -> str:
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


def _raise_first_error(validator: Draft202012Validator, value: object, subject: str) -> None:
    """Raise `ValidationError` with the most relevant error of ``value``, if any."""
    error = best_match(validator.iter_errors(value))
    if error is not None:
        raise ValidationError(subject, list(error.absolute_path), _reason(error))


@dataclass(frozen=True, slots=True)
class Method:
    """One operation of an integration, with its input and output validators compiled once.

    ``raw`` is the method's object as written in the definition file. ``binding`` is its
    compiled HTTP binding (`http` or `handler`), used by `prefect_integrations.binding`.
    """

    integration_id: str
    id: str
    name: str
    description: str = field(repr=False)
    input_schema: dict[str, Any] = field(repr=False)
    output_schema: dict[str, Any] = field(repr=False)
    required_scopes: tuple[str, ...]
    raw: dict[str, Any] = field(repr=False)
    binding: MethodBinding | None = field(default=None, repr=False, compare=False)
    input_validator: Draft202012Validator = field(init=False, repr=False, compare=False)
    output_validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_validator", _compile(self.input_schema))
        object.__setattr__(self, "output_validator", _compile(self.output_schema))

    def __hash__(self) -> int:
        return hash((self.integration_id, self.id))

    @property
    def qualified_name(self) -> str:
        """``<integration>.<method>``, e.g. ``xero.create_invoice``."""
        return f"{self.integration_id}.{self.id}"

    @property
    def callable(self) -> bool:
        """True when the method has an ``http`` binding or a ``handler``."""
        return self.binding is not None

    def require_bound(self) -> MethodBinding:
        """The method's binding; `MethodNotBound` for a method without one."""
        if self.binding is None:
            raise MethodNotBound(self.integration_id, self.id)
        return self.binding

    @property
    def http(self) -> HttpBinding | None:
        """The compiled declarative binding (``http``), or None for a handler method."""
        return self.binding.http if self.binding is not None else None

    @property
    def handler(self) -> MethodHandler | None:
        """The loaded handler object (``handler``), or None for an ``http`` method."""
        return self.binding.handler if self.binding is not None else None

    def validate_input(self, value: object, *, subject: str | None = None) -> None:
        """Raise `ValidationError` if ``value`` breaks the input schema.

        Anything but plain JSON data (NaN, bytes, sets, nesting deeper than
        `~prefect_integrations.validation.MAX_DEPTH`) is refused first, naming its path.
        """
        subject = subject or f"Input of '{self.qualified_name}'"
        check_json(value, subject=subject)
        _raise_first_error(self.input_validator, value, subject)

    def validate_output(self, value: object, *, subject: str | None = None) -> None:
        """Raise `ValidationError` if ``value`` breaks the output schema."""
        _raise_first_error(
            self.output_validator, value, subject or f"Output of '{self.qualified_name}'"
        )

    @classmethod
    def from_document(
        cls, integration_id: str, raw: dict[str, Any], *, binding: MethodBinding | None = None
    ) -> Method:
        """Build a method from its (already validated) object in a definition document."""
        return cls(
            integration_id=integration_id,
            id=raw["id"],
            name=raw["name"],
            description=raw.get("description", ""),
            input_schema=raw["inputSchema"],
            output_schema=raw["outputSchema"],
            required_scopes=tuple(raw.get("requiredScopes", ())),
            raw=raw,
            binding=binding,
        )


def _content_hash(document: Mapping[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Definition:
    """A validated integration definition with its validators compiled.

    ``methods`` is a read-only mapping ordered as in the file; ``raw`` is the whole parsed
    document and ``content_hash`` the SHA-256 of its canonical JSON, so a stored copy can be
    compared with the file without comparing field by field. ``binding`` holds the compiled
    integration-level binding (base URL, auth placement, headers, errors, health check).
    """

    id: str
    name: str
    description: str = field(repr=False)
    version: str
    auth_type: AuthType
    config_schema: dict[str, Any] = field(repr=False)
    oauth2_config: dict[str, Any] | None = field(repr=False)
    methods: Mapping[str, Method] = field(repr=False)
    raw: dict[str, Any] = field(repr=False)
    source: str
    documentation_url: str | None = field(default=None, repr=False)
    logo_url: str | None = field(default=None, repr=False)
    binding: DefinitionBinding | None = field(default=None, repr=False, compare=False)
    content_hash: str = field(init=False)
    config_validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", MappingProxyType(dict(self.methods)))
        object.__setattr__(self, "content_hash", _content_hash(self.raw))
        object.__setattr__(self, "config_validator", _compile(self.config_schema))

    def __hash__(self) -> int:
        return hash((self.id, self.content_hash))

    @property
    def base_url(self) -> str | None:
        """``baseUrl`` without a trailing ``/`` (an instance's ``base_url`` config replaces it)."""
        return self.binding.base_url if self.binding is not None else None

    @property
    def auth(self) -> ApiKeyPlacement | CustomAuth | None:
        """Credential placement: `ApiKeyPlacement` (apikey), `CustomAuth` (custom), or None."""
        return self.binding.auth if self.binding is not None else None

    @property
    def grant_type(self) -> str:
        """The OAuth2 grant of an oauth2 definition (``oauth2Config.grantType``)."""
        return str((self.oauth2_config or {}).get("grantType", "authorization_code"))

    @property
    def health_check(self) -> HealthCheck | None:
        """The method and inputs that check an instance works (``healthCheck``), if any."""
        return self.binding.health_check if self.binding is not None else None

    def method(self, method_id: str) -> Method:
        """Return the method ``method_id``; raise `DefinitionError` listing the known ones."""
        try:
            return self.methods[method_id]
        except KeyError:
            known = ", ".join(self.methods) or "none"
            raise DefinitionError(
                f"Integration '{self.id}' has no method '{method_id}' (known: {known})"
            ) from None

    def validate_config(self, config: object, *, subject: str | None = None) -> None:
        """Raise `ValidationError` if ``config`` is not plain JSON data or breaks the schema."""
        subject = subject or f"Config for '{self.id}'"
        check_json(config, subject=subject)
        _raise_first_error(self.config_validator, config, subject)

    @classmethod
    def from_document(cls, document: object, *, source: str) -> Definition:
        """Validate ``document`` and build a definition, or raise `DefinitionError`.

        ``source`` names where the document came from (a file path, ``db:<id>``...). The
        file-name and cross-file checks of `collect` do not apply here.
        """
        problems = validate_document(document, source=source)
        if problems:
            raise DefinitionError(problems)
        return _build(cast("dict[str, Any]", document), source=source)


def _build(document: dict[str, Any], *, source: str) -> Definition:
    """Build a `Definition` from a document that passed `validate_document`."""
    integration_id: str = document["integrationId"]
    binding, method_bindings, problems = compile_definition(document)
    if problems:  # pragma: no cover - validate_document reported them already
        raise DefinitionError([_problem(source, path, message) for path, message in problems])
    methods = {
        m["id"]: Method.from_document(integration_id, m, binding=method_bindings.get(m["id"]))
        for m in document["methods"]
    }
    return Definition(
        id=integration_id,
        name=document["name"],
        description=document["description"],
        version=document["version"],
        auth_type=document["authType"],
        config_schema=document["configSchema"],
        oauth2_config=document.get("oauth2Config"),
        methods=methods,
        raw=document,
        source=source,
        documentation_url=document.get("documentationUrl"),
        logo_url=document.get("logoUrl"),
        binding=binding,
    )


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


class Registry:
    """An immutable set of definitions looked up by integration id.

    Iterating yields the definitions in id order.
    """

    __slots__ = ("_definitions",)

    def __init__(self, definitions: Iterable[Definition]) -> None:
        by_id: dict[str, Definition] = {}
        problems: list[DefinitionProblem] = []
        for definition in definitions:
            first = by_id.get(definition.id)
            if first is not None:
                problems.append(
                    DefinitionProblem(
                        source=definition.source,
                        path=("integrationId",),
                        message=(
                            f"duplicate integration id '{definition.id}', "
                            f"already defined in {first.source}"
                        ),
                    )
                )
                continue
            by_id[definition.id] = definition
        if problems:
            raise DefinitionError(problems)
        self._definitions: Mapping[str, Definition] = MappingProxyType(
            {key: by_id[key] for key in sorted(by_id)}
        )

    def get(self, integration_id: str) -> Definition:
        """Return the definition ``integration_id`` or raise `UnknownIntegration`."""
        try:
            return self._definitions[integration_id]
        except KeyError:
            raise UnknownIntegration(integration_id, known=list(self._definitions)) from None

    def ids(self) -> list[str]:
        """Integration ids in sorted order."""
        return list(self._definitions)

    def __contains__(self, integration_id: object) -> bool:
        return integration_id in self._definitions

    def __iter__(self) -> Iterator[Definition]:
        return iter(self._definitions.values())

    def __len__(self) -> int:
        return len(self._definitions)

    def __repr__(self) -> str:
        return f"Registry({self.ids()!r})"


# --------------------------------------------------------------------------------------
# Validation of one document
# --------------------------------------------------------------------------------------


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


def _path_key(path: _JsonPath) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, part) for part in path)


def _problem(source: str, path: Sequence[str | int], message: str) -> DefinitionProblem:
    return DefinitionProblem(source=source, path=path, message=message)


def _meta_error_problems(error: SchemaValidationError, source: str) -> list[DefinitionProblem]:
    """Turn one meta-schema error into problems with messages a person can act on."""
    best = best_match([error])
    if best is None:  # pragma: no cover - best_match of a non-empty list is never None
        best = error
    path: _JsonPath = tuple(best.absolute_path)
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
                _problem(
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
            return [_problem(source, path, message)]
        if schema == _meta_schema()["$defs"]["httpUrl"]:
            return [_problem(source, path, f"{instance!r} is not an absolute http(s) URL")]
        if schema == _meta_schema()["$defs"]["scope"]:
            message = f"{instance!r} is not a single scope (list each scope as its own item)"
            return [_problem(source, path, message)]
        if path[-1] in ("id", "integrationId"):
            message = (
                f"{instance!r} is not a valid id "
                "(lowercase letters, digits and '_', starting with a letter)"
            )
            return [_problem(source, path, message)]
    return [_problem(source, path, _reason(best))]


def _embedded_schemas(document: Mapping[str, Any]) -> Iterator[tuple[_JsonPath, object]]:
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


def _check_schema(schema: Mapping[str, Any]) -> _SchemaCheck:
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
                _problem(
                    source,
                    (*location, "$schema"),
                    f"unsupported dialect {declared!r}: embedded schemas are draft 2020-12 "
                    "(omit $schema or use 'https://json-schema.org/draft/2020-12/schema')",
                )
            )
        error = _check_schema(schema)
        if error is not None:
            error_path, message = error
            problems.append(
                _problem(source, (*location, *error_path), f"invalid JSON Schema: {message}")
            )

    # Patterns end in '$', which Python's re also matches before a final line break.
    methods = document.get("methods")
    names: list[tuple[_JsonPath, object]] = [(("integrationId",), document.get("integrationId"))]
    names.append((("version",), document.get("version")))
    if isinstance(methods, list):
        names.extend(
            (("methods", i, "id"), m.get("id"))
            for i, m in enumerate(methods)
            if isinstance(m, dict)
        )
    for location, value in names:
        if isinstance(value, str) and value.endswith("\n"):
            problems.append(_problem(source, location, f"{value!r} ends with a line break"))

    # Method ids unique within the definition.
    if isinstance(methods, list):
        seen: dict[str, int] = {}
        for index, method in enumerate(methods):
            if not isinstance(method, dict) or not isinstance(method.get("id"), str):
                continue
            method_id = method["id"]
            if method_id in seen:
                problems.append(
                    _problem(
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
        problems.append(_problem(source, ("oauth2Config",), "required when authType is 'oauth2'"))
    elif auth_type in ("apikey", "custom") and has_oauth2:
        problems.append(
            _problem(
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
                            _problem(
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
            problems.append(_problem(source, ("methods", index), message))
        http = method.get("http")
        body = http.get("body") if isinstance(http, dict) else None
        if isinstance(body, dict):
            location: _JsonPath = ("methods", index, "http", "body")
            kinds = [kind for kind in ("json", "form", "raw") if kind in body]
            if len(kinds) != 1:
                problems.append(
                    _problem(source, location, "exactly one of 'json', 'form' or 'raw' is required")
                )
            if "contentType" in body and "raw" not in body:
                problems.append(
                    _problem(source, (*location, "contentType"), "only allowed with 'raw'")
                )
            if http.get("method") == "GET":  # type: ignore[union-attr]
                problems.append(_problem(source, location, "a GET request has no body"))
    if "baseUrl" not in document and any_http:
        problems.append(
            _problem(source, ("baseUrl",), "required when a method has an 'http' binding")
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
                _problem(
                    source,
                    ("auth", "apikey"),
                    f"only allowed when authType is 'apikey' (authType is {auth_type!r})",
                )
            )
        if "custom" in auth and auth_type != "custom":
            problems.append(
                _problem(
                    source,
                    ("auth", "custom"),
                    f"only allowed when authType is 'custom' (authType is {auth_type!r})",
                )
            )
    if auth_type == "custom" and not (isinstance(auth, dict) and "custom" in auth):
        problems.append(_problem(source, ("auth", "custom"), "required when authType is 'custom'"))

    # The health check names a method of this definition with inputs valid for it.
    health = document.get("healthCheck")
    if isinstance(health, dict) and isinstance(health.get("method"), str):
        by_id = {m["id"]: m for m in method_list if isinstance(m.get("id"), str)}
        target = by_id.get(health["method"])
        if target is None:
            known = ", ".join(str(m.get("id")) for m in method_list) or "none"
            problems.append(
                _problem(
                    source,
                    ("healthCheck", "method"),
                    f"unknown method '{health['method']}' (known: {known})",
                )
            )
        elif health["method"] not in bound:
            problems.append(
                _problem(
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
                and _check_schema(schema) is None
            ):
                error = best_match(_compile(schema).iter_errors(value))
                if error is not None:
                    problems.append(
                        _problem(
                            source,
                            ("healthCheck", "input", *error.absolute_path),
                            f"not a valid input of method '{health['method']}': {_reason(error)}",
                        )
                    )

    # Credential rotation needs an apikey definition, a health check and known methods.
    rotation = document.get("credentialRotation")
    if isinstance(rotation, dict):
        known_ids = {m["id"] for m in method_list if isinstance(m.get("id"), str)}
        if auth_type != "apikey":
            problems.append(
                _problem(
                    source,
                    ("credentialRotation",),
                    f"only supported for authType 'apikey' (authType is {auth_type!r})",
                )
            )
        if not isinstance(health, dict):
            problems.append(
                _problem(
                    source, ("credentialRotation",), "needs a healthCheck to verify the new key"
                )
            )
        for step in ("create", "revoke"):
            method_id = rotation.get(step)
            if isinstance(method_id, str) and method_id not in known_ids:
                problems.append(
                    _problem(source, ("credentialRotation", step), f"unknown method '{method_id}'")
                )
            elif isinstance(method_id, str) and method_id not in bound:
                problems.append(
                    _problem(
                        source,
                        ("credentialRotation", step),
                        f"method '{method_id}' is not callable (it has no 'http' or 'handler' "
                        "binding)",
                    )
                )

    # Templates compile and use known variables; handlers import.
    _, _, compile_problems = compile_definition(document)
    problems.extend(_problem(source, path, message) for path, message in compile_problems)
    return problems


def validate_document(document: object, *, source: str) -> list[DefinitionProblem]:
    """Return every problem of a parsed definition document (``[]`` if it is valid).

    Checks that it is plain JSON data nested at most
    `~prefect_integrations.validation.MAX_DEPTH` deep, the meta-schema (all errors, sorted
    by path), that each embedded schema is a valid draft 2020-12 JSON Schema, that method
    ids are unique, that ``oauth2Config`` is present
    exactly when ``authType`` is ``oauth2``, that required scopes are requested, and the
    bindings: at most one of ``http``/``handler`` per method, ``baseUrl`` when one is ``http``,
    ``auth`` matching ``authType``, the health check's method and inputs, every template
    compiling (with known variables) and every handler importing.
    """
    if not isinstance(document, dict):
        return [
            _problem(source, (), f"top level must be a JSON object, not {_json_type(document)}")
        ]
    unusable = json_problem(document)  # e.g. nested too deeply to validate without overflow
    if unusable is not None:
        return [_problem(source, *unusable)]
    problems: list[DefinitionProblem] = []
    for error in _meta_validator().iter_errors(document):
        problems.extend(_meta_error_problems(error, source))
    problems.extend(_rule_problems(document, source))
    problems.extend(_binding_rule_problems(document, source))
    problems.sort(key=lambda p: (_path_key(p.path), p.message))
    return problems


def _json_type(value: object) -> str:
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


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def load_document(path: Path) -> tuple[dict[str, Any] | None, list[DefinitionProblem]]:
    """Read and parse one definition file (JSON only, no validation).

    Returns the document and no problems, or ``None`` and the problems (unreadable file,
    malformed JSON with line and column, top level not an object).
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return None, [_problem(source, (), f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
    except OSError as exc:
        return None, [_problem(source, (), f"cannot read file: {exc.strerror or exc}")]
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        message = f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        return None, [_problem(source, (), message)]
    except ValueError as exc:
        return None, [_problem(source, (), f"malformed JSON: {exc}")]
    except RecursionError:
        return None, [_problem(source, (), "malformed JSON: nested too deeply")]
    if not isinstance(document, dict):
        message = f"top level must be a JSON object, not {_json_type(document)}"
        return None, [_problem(source, (), message)]
    return document, []


def _expand(paths: Iterable[Path]) -> Iterator[tuple[Path, list[DefinitionProblem]]]:
    """Yield each definition file to read, or a path with the problem that prevents it."""
    seen: set[Path] = set()
    for path in paths:
        try:
            if path.is_dir():
                files = sorted(p for p in path.glob("*.json") if p.is_file())
            elif path.exists():
                files = [path]
            else:
                yield path, [_problem(str(path), (), "no such file or directory")]
                continue
        except OSError as exc:  # e.g. a name too long for the file system
            yield path, [_problem(str(path), (), f"cannot read: {exc.strerror or exc}")]
            continue
        for file in files:
            resolved = file.resolve()
            if resolved in seen:
                continue  # the same file given twice (e.g. a folder and a file in it)
            seen.add(resolved)
            yield file, []


def collect(paths: Iterable[Path]) -> tuple[list[Definition], list[DefinitionProblem]]:
    """Load every definition in ``paths`` (files, or folders of ``*.json``, non-recursive).

    Returns the valid definitions and every problem found in any file; never raises for bad
    content. Beyond `validate_document`, each file's name must match its id and an id may
    be defined only once (the later file gets the problem).
    """
    definitions: list[Definition] = []
    problems: list[DefinitionProblem] = []
    first_source: dict[str, str] = {}
    for path, path_problems in _expand(paths):
        if path_problems:
            problems.extend(path_problems)
            continue
        source = str(path)
        document, file_problems = load_document(path)
        if document is None:
            problems.extend(file_problems)
            continue
        file_problems = validate_document(document, source=source)
        integration_id = document.get("integrationId")
        if isinstance(integration_id, str) and _IDENTIFIER_RE.fullmatch(integration_id):
            if path.stem != integration_id:
                file_problems.append(
                    _problem(
                        source,
                        ("integrationId",),
                        f"file name '{path.name}' does not match id '{integration_id}' "
                        f"(expected '{integration_id}.json')",
                    )
                )
            if integration_id in first_source:
                file_problems.append(
                    _problem(
                        source,
                        ("integrationId",),
                        f"duplicate integration id '{integration_id}', "
                        f"already defined in {first_source[integration_id]}",
                    )
                )
            else:
                first_source[integration_id] = source
        if file_problems:
            file_problems.sort(key=lambda p: (_path_key(p.path), p.message))
            problems.extend(file_problems)
            continue
        definitions.append(_build(document, source=source))
    return definitions, problems


def shipped_definitions_dir() -> Path:
    """Return the folder of the definitions shipped with the package."""
    return bundled_path("definitions")


def load_registry(extra_paths: Sequence[Path] = (), *, include_shipped: bool = True) -> Registry:
    """Load the shipped definitions plus ``extra_paths`` into a `Registry`.

    A definition in ``extra_paths`` replaces the shipped one with the same integration id
    (so a team can bring its own ``xero.json``); an id defined twice within
    ``extra_paths`` is a problem. Raises `DefinitionError` listing every problem of every
    file if any file is invalid.
    """
    definitions, problems = collect_layered(extra_paths, include_shipped=include_shipped)
    if problems:
        raise DefinitionError(problems)
    return Registry(definitions)


def collect_layered(
    extra_paths: Sequence[Path], *, include_shipped: bool = True
) -> tuple[list[Definition], list[DefinitionProblem]]:
    """`collect` the shipped definitions and ``extra_paths``, the latter replacing the former.

    What `load_registry` loads, without raising: the valid definitions (a configured one
    in place of the shipped one with its id) and every problem of every file.
    """
    definitions, problems = collect([Path(p) for p in extra_paths])
    if include_shipped:
        shipped, shipped_problems = collect([shipped_definitions_dir()])
        problems = shipped_problems + problems
        replaced = {d.id for d in definitions}
        definitions = [d for d in shipped if d.id not in replaced] + definitions
    return definitions, problems
