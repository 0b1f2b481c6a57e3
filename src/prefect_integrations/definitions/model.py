"""The typed, frozen model of an integration definition.

A `Definition` is built once from a document that passed
`~prefect_integrations.definitions.rules.validate_document`; everything callers read from
the document has a typed home here: the credential placement (`ApiKeyPlacement`,
`CustomAuth`), the health check (`HealthCheck`), the provider credential rotation
(`CredentialRotation`) and the OAuth2 settings (`OAuth2Config`). Each `Method` carries its
input and output validators, compiled once, and its compiled binding
(`prefect_integrations.definitions.bindings`). ``raw`` keeps the parsed document for the
database mirror and the content hash only; read the typed fields instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast

from jsonschema import Draft202012Validator

from prefect_integrations.definitions.bindings import (
    DefinitionBinding,
    HttpBinding,
    MethodBinding,
    MethodHandler,
    compile_definition,
)
from prefect_integrations.definitions.rules import problem, validate_document
from prefect_integrations.definitions.schemas import compile_validator, raise_first_error
from prefect_integrations.exceptions import DefinitionError, MethodNotBound
from prefect_integrations.validation import check_storable

__all__ = [
    "ApiKeyPlacement",
    "AuthType",
    "CredentialRotation",
    "CustomAuth",
    "Definition",
    "HealthCheck",
    "Method",
    "OAuth2Config",
    "build_definition",
]

AuthType = Literal["oauth2", "apikey", "custom"]


@dataclass(frozen=True, slots=True)
class ApiKeyPlacement:
    """Where an ``apikey`` definition's key goes (``auth.apikey``).

    ``location`` is ``header`` (``name``, default ``Authorization``, value ``prefix + key``;
    the prefix defaults to ``"Bearer "`` for ``Authorization`` and to nothing otherwise),
    ``query`` (parameter ``name``) or ``basic`` (HTTP basic, key as the user name).
    """

    location: Literal["header", "query", "basic"] = "header"
    name: str | None = "Authorization"
    prefix: str = "Bearer "

    @classmethod
    def from_document(cls, raw: Mapping[str, Any] | None) -> ApiKeyPlacement:
        """Read ``auth.apikey`` (absent: ``Authorization: Bearer <key>``)."""
        raw = raw or {}
        location = raw.get("in", "header")
        if location == "basic":
            return cls(location="basic", name=None, prefix="")
        if location == "query":
            return cls(location="query", name=str(raw.get("name", "api_key")), prefix="")
        name = str(raw.get("name", "Authorization"))
        default_prefix = "Bearer " if name.lower() == "authorization" else ""
        return cls(location="header", name=name, prefix=str(raw.get("prefix", default_prefix)))


@dataclass(frozen=True, slots=True)
class CustomAuth:
    """A ``custom`` definition's scheme (``auth.custom``): a registered scheme name and options."""

    scheme: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """The call that checks an instance works (``healthCheck``): a method and fixed inputs."""

    method_id: str
    input: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> HealthCheck | None:
        """Read ``healthCheck`` (None when the definition declares none)."""
        health = document.get("healthCheck")
        if not isinstance(health, Mapping) or not isinstance(health.get("method"), str):
            return None
        health_input = health.get("input")
        return cls(
            method_id=health["method"],
            input=health_input if isinstance(health_input, Mapping) else {},
        )


@dataclass(frozen=True, slots=True)
class CredentialRotation:
    """How the provider's API key is rotated (``credentialRotation``).

    ``create`` is the id of the method that mints a new key (its output has ``api_key`` and
    optionally ``key_id``); ``revoke``, if set, the id of the method that revokes a key by
    its ``key_id``.
    """

    create: str
    revoke: str | None = None

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> CredentialRotation | None:
        """Read ``credentialRotation`` (None when the definition declares none)."""
        rotation = document.get("credentialRotation")
        if not isinstance(rotation, Mapping):
            return None
        revoke = rotation.get("revoke")
        return cls(
            create=str(rotation.get("create")),
            revoke=revoke if isinstance(revoke, str) else None,
        )


@dataclass(frozen=True, slots=True)
class OAuth2Config:
    """An ``oauth2`` definition's authorization settings (``oauth2Config``), defaults applied.

    ``scope_separator`` joins ``scopes`` in the authorization request;
    ``additional_parameters`` are extra query parameters of that request; ``grant_type`` is
    ``authorization_code`` (a person connects) or ``client_credentials`` (machine to
    machine); ``token_endpoint_auth_method`` is ``client_secret_basic`` or
    ``client_secret_post``.
    """

    authorization_url: str
    token_url: str
    scopes: tuple[str, ...] = ()
    revocation_url: str | None = None
    scope_separator: str = " "
    additional_parameters: Mapping[str, str] = field(default_factory=dict)
    pkce: bool = True
    grant_type: str = "authorization_code"
    token_endpoint_auth_method: str = "client_secret_basic"  # noqa: S105 - a method name

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> OAuth2Config | None:
        """Read ``oauth2Config`` (None when the definition has none)."""
        raw = document.get("oauth2Config")
        if not isinstance(raw, Mapping):
            return None
        revocation_url = raw.get("revocationUrl")
        extra = raw.get("additionalParameters")
        return cls(
            authorization_url=str(raw.get("authorizationUrl")),
            token_url=str(raw.get("tokenUrl")),
            scopes=tuple(str(scope) for scope in raw.get("scopes") or ()),
            revocation_url=revocation_url if isinstance(revocation_url, str) else None,
            scope_separator=str(raw.get("scopeSeparator", " ")),
            additional_parameters=MappingProxyType(
                {str(k): str(v) for k, v in extra.items()} if isinstance(extra, Mapping) else {}
            ),
            pkce=bool(raw.get("pkce", True)),
            grant_type=str(raw.get("grantType", "authorization_code")),
            token_endpoint_auth_method=str(
                raw.get("tokenEndpointAuthMethod", "client_secret_basic")
            ),
        )

    def url(self, name: str) -> str | None:
        """The URL called ``name`` in the document (None if absent or unknown).

        ``name`` is ``authorizationUrl``, ``tokenUrl`` or ``revocationUrl``.
        """
        return {
            "authorizationUrl": self.authorization_url,
            "tokenUrl": self.token_url,
            "revocationUrl": self.revocation_url,
        }.get(name)


def _auth(document: Mapping[str, Any]) -> ApiKeyPlacement | CustomAuth | None:
    """The credential placement of ``auth`` for the definition's ``authType``."""
    auth = document.get("auth")
    auth = auth if isinstance(auth, Mapping) else {}
    kind = document.get("authType")
    if kind == "apikey":
        placement = auth.get("apikey")
        return ApiKeyPlacement.from_document(placement if isinstance(placement, Mapping) else None)
    if kind == "custom" and isinstance(auth.get("custom"), Mapping):
        custom = auth["custom"]
        options = custom.get("options")
        return CustomAuth(
            scheme=str(custom.get("scheme")),
            options=options if isinstance(options, Mapping) else {},
        )
    return None


@dataclass(frozen=True, slots=True)
class Method:
    """One operation of an integration, with its input and output validators compiled once.

    ``raw`` is the method's object as written in the definition file. ``binding`` is its
    compiled HTTP binding (`http` or `handler`), used by `prefect_integrations.binding`.
    ``idempotent`` is what the definition declares (None: the HTTP verb decides) and
    ``idempotency_key_header`` the provider's idempotency key header, if any.
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
    idempotent: bool | None = field(default=None, repr=False)
    idempotency_key_header: str | None = field(default=None, repr=False)
    input_validator: Draft202012Validator = field(init=False, repr=False, compare=False)
    output_validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_validator", compile_validator(self.input_schema))
        object.__setattr__(self, "output_validator", compile_validator(self.output_schema))

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
        """The handler object (``handler``, imported on first use), or None for ``http``."""
        return self.binding.handler if self.binding is not None else None

    def validate_input(self, value: object, *, subject: str | None = None) -> None:
        """Raise `ValidationError` if ``value`` breaks the input schema.

        Anything but plain JSON data (NaN, bytes, sets, nesting deeper than
        `~prefect_integrations.validation.MAX_DEPTH`) and text PostgreSQL cannot store (a
        NUL character, a lone surrogate) is refused first, naming its path.
        """
        subject = subject or f"Input of '{self.qualified_name}'"
        check_storable(value, subject=subject)
        raise_first_error(self.input_validator, value, subject)

    def validate_output(self, value: object, *, subject: str | None = None) -> None:
        """Raise `ValidationError` if ``value`` breaks the output schema."""
        raise_first_error(
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
            idempotent=raw.get("idempotent"),
            idempotency_key_header=raw.get("idempotencyKeyHeader"),
        )


def _content_hash(document: Mapping[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Definition:
    """A validated integration definition with its validators compiled.

    ``methods`` is a read-only mapping ordered as in the file; ``raw`` is the whole parsed
    document and ``content_hash`` the SHA-256 of its canonical JSON, so a stored copy can be
    compared with the file without comparing field by field; read the typed fields, not
    ``raw``. ``binding`` holds the compiled integration-level binding (base URL, headers,
    errors); ``auth`` the credential placement (`ApiKeyPlacement` for apikey, `CustomAuth`
    for custom, None for oauth2), ``oauth2`` the typed ``oauth2Config``, ``health_check`` and
    ``credential_rotation`` what the document declares (or None), ``allowed_hosts`` the
    hosts URL overrides may use (``allowedHosts``, lower-cased; None: any). ``oauth2_config``
    is ``oauth2Config`` as written (the database mirror's column).
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
    auth: ApiKeyPlacement | CustomAuth | None = field(default=None, repr=False, compare=False)
    health_check: HealthCheck | None = field(default=None, repr=False, compare=False)
    credential_rotation: CredentialRotation | None = field(default=None, repr=False, compare=False)
    oauth2: OAuth2Config | None = field(default=None, repr=False, compare=False)
    allowed_hosts: tuple[str, ...] | None = field(default=None, repr=False, compare=False)
    content_hash: str = field(init=False)
    config_validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", MappingProxyType(dict(self.methods)))
        object.__setattr__(self, "content_hash", _content_hash(self.raw))
        object.__setattr__(self, "config_validator", compile_validator(self.config_schema))

    def __hash__(self) -> int:
        return hash((self.id, self.content_hash))

    @property
    def base_url(self) -> str | None:
        """``baseUrl`` without a trailing ``/`` (an instance's ``base_url`` config replaces it)."""
        return self.binding.base_url if self.binding is not None else None

    @property
    def grant_type(self) -> str:
        """The OAuth2 grant of an oauth2 definition (``oauth2Config.grantType``)."""
        return self.oauth2.grant_type if self.oauth2 is not None else "authorization_code"

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
        """Raise `ValidationError` if ``config`` is not storable JSON data or breaks the schema."""
        subject = subject or f"Config for '{self.id}'"
        check_storable(config, subject=subject)
        raise_first_error(self.config_validator, config, subject)

    @classmethod
    def from_document(cls, document: object, *, source: str) -> Definition:
        """Validate ``document`` and build a definition, or raise `DefinitionError`.

        ``source`` names where the document came from (a file path, ``db:<id>``...). The
        file-name and cross-file checks of `collect` do not apply here.
        """
        problems = validate_document(document, source=source)
        if problems:
            raise DefinitionError(problems)
        return build_definition(cast("dict[str, Any]", document), source=source)


def build_definition(document: dict[str, Any], *, source: str, lazy: bool = False) -> Definition:
    """Build a `Definition` from a document that passed `validate_document`.

    With ``lazy`` (a document that passed before, its templates compiled then), the
    methods' ``http`` bindings are compiled at their first use.
    """
    integration_id: str = document["integrationId"]
    binding, method_bindings, problems = compile_definition(document, lazy=lazy)
    if problems:  # a handler unregistered since the document passed validate_document
        raise DefinitionError([problem(source, path, message) for path, message in problems])
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
        auth=_auth(document),
        health_check=HealthCheck.from_document(document),
        credential_rotation=CredentialRotation.from_document(document),
        oauth2=OAuth2Config.from_document(document),
        allowed_hosts=_allowed_hosts(document.get("allowedHosts")),
    )


def _allowed_hosts(value: object) -> tuple[str, ...] | None:
    return tuple(str(host).lower() for host in value) if isinstance(value, list) else None
