"""Integration definitions: the typed model, its rules, loading, and the registry.

    from prefect_integrations.definitions import load_registry

    registry = load_registry()
    method = registry.get("xero").method("create_invoice")
    method.validate_input({"contact_id": ..., "line_items": [...]})

- `model`: the frozen `Definition` and `Method` and the typed parts callers read
  (`ApiKeyPlacement`, `CustomAuth`, `HealthCheck`, `CredentialRotation`,
  `OAuth2Config`).
- `rules`: the meta-schema and the checks it cannot express (`validate_document`).
- `bindings`: templates and handlers of a definition, compiled at load.
- `handler_registry`: the handlers a definition may name (registered entry points).
- `schemas`: the embedded JSON Schemas, checked and compiled into validators.
- `checked`: the files that passed the checks, remembered by content hash.
- `loader`: files to documents to definitions (`collect`, `load_registry`).
- `registry`: the `Registry` of definitions by integration id.

This package knows nothing of sending HTTP requests or of SQL; imports point down from
``loader`` to ``checked``, ``registry``, ``model``, ``rules``, ``schemas`` and ``bindings``.
"""

from prefect_integrations.definitions.bindings import (
    DefinitionBinding,
    ErrorMapping,
    HttpBinding,
    MethodBinding,
    MethodHandler,
    RequestContext,
    compile_definition,
    load_handler,
)
from prefect_integrations.definitions.loader import (
    collect,
    collect_layered,
    load_document,
    load_registry,
    shipped_definitions_dir,
)
from prefect_integrations.definitions.model import (
    ApiKeyPlacement,
    AuthType,
    CredentialRotation,
    CustomAuth,
    Definition,
    HealthCheck,
    Method,
    OAuth2Config,
)
from prefect_integrations.definitions.registry import Registry
from prefect_integrations.definitions.rules import meta_schema, validate_document

__all__ = [
    "ApiKeyPlacement",
    "AuthType",
    "CredentialRotation",
    "CustomAuth",
    "Definition",
    "DefinitionBinding",
    "ErrorMapping",
    "HealthCheck",
    "HttpBinding",
    "Method",
    "MethodBinding",
    "MethodHandler",
    "OAuth2Config",
    "Registry",
    "RequestContext",
    "collect",
    "collect_layered",
    "compile_definition",
    "load_document",
    "load_handler",
    "load_registry",
    "meta_schema",
    "shipped_definitions_dir",
    "validate_document",
]
