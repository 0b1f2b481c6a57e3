"""Validation of what an instance write takes: ids, names, config, credentials, status.

Each check raises `ValidationError` naming the instance and the field, never echoing a
secret value, and returns the value as it is stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, cast

from prefect_integrations.credentials import (
    SECTIONS,
    TIME_FIELDS,
    normalize_times,
    oauth2_section,
    spec_example,
    to_epoch,
)
from prefect_integrations.definitions import Definition
from prefect_integrations.exceptions import ValidationError
from prefect_integrations.scope import Context, Scope, check_context_id
from prefect_integrations.store.url_overrides import check_url_overrides
from prefect_integrations.validation import (
    check_json,
    check_storable,
    credentials_validator,
    status_validator,
    validate,
)

__all__ = [
    "check_config",
    "check_context",
    "check_description",
    "check_instance_id",
    "check_name",
    "check_scope",
    "usable",
    "validate_credentials",
    "validate_status",
]

_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


def check_instance_id(instance_id: str) -> None:
    """Refuse an instance id that is not 1-255 letters, digits, "_", "." or "-"."""
    if not _INSTANCE_ID.fullmatch(instance_id):
        raise ValidationError(
            "Instance id",
            [],
            f"{instance_id[:80]!r} must be 1-255 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
        )


def check_scope(instance_id: str, scope: Scope) -> Scope:
    """The scope if its context id follows `~prefect_integrations.scope.CONTEXT_ID_RULE`.

    A scope read from a stored row is not checked (`Scope.stored`); one written is.
    """
    try:
        return scope.check()
    except ValidationError as exc:
        subject = f"Instance '{instance_id}'"
        raise ValidationError(subject, ["context", *exc.path], exc.reason) from None


def check_context(context: Context) -> Context:
    """The caller's context if its client and user ids follow the id rule."""
    if context.client_id is not None:
        check_context_id(context.client_id, field="client_id")
    if context.user_id is not None:
        check_context_id(context.user_id, field="user_id")
    return context


def check_name(instance_id: str, name: str) -> str:
    """The name if it is non-empty, at most 255 characters and storable."""
    subject = f"Instance '{instance_id}'"
    if not name.strip():
        raise ValidationError(subject, ["name"], "name must not be empty")
    if len(name) > 255:
        raise ValidationError(subject, ["name"], "name must be at most 255 characters")
    check_storable(name, subject=f"Name of instance '{instance_id}'")
    return name


def check_description(instance_id: str, description: object) -> str | None:
    """The description (None for none) if it is a storable string of at most 4000 characters."""
    if description is None:
        return None
    subject = f"Instance '{instance_id}'"
    if not isinstance(description, str):
        raise ValidationError(subject, ["description"], "description must be a string")
    if len(description) > 4000:
        raise ValidationError(
            subject, ["description"], "description must be at most 4000 characters"
        )
    check_storable(description, subject=f"Description of instance '{instance_id}'")
    return description


def check_config(definition: Definition, instance_id: str, config: object) -> dict[str, Any]:
    """The config as a dict if it is a JSON object valid for the definition's configSchema.

    URL overrides (``base_url``, ``authorization_url``, ``token_url``) must also be safe
    endpoints, within the definition's ``allowedHosts`` if it declares them (see
    `prefect_integrations.store.url_overrides`).
    """
    subject = f"Config of instance '{instance_id}'"
    if not isinstance(config, Mapping):
        raise ValidationError(subject, [], "config must be a JSON object")
    values = dict(config)
    definition.validate_config(values, subject=subject)
    check_storable(values, subject=subject)
    check_url_overrides(instance_id, values, definition.allowed_hosts)
    return values


def _check_sections(definition: Definition, subject: str, values: Mapping[str, Any]) -> None:
    """Refuse any top-level field but the definition's own section, with the expected shape."""
    auth_type = definition.auth_type
    expected = spec_example(auth_type)
    for key in values:
        if key not in SECTIONS:
            raise ValidationError(
                subject,
                [key],
                f"unexpected field; credentials take the specification's shape {expected} "
                "(the flat shape of earlier versions is not accepted)",
            )
        if key != auth_type:
            raise ValidationError(
                subject,
                [key],
                f"these are {key} credentials but integration '{definition.id}' uses "
                f"authType '{auth_type}'; expected {expected}",
            )
    if auth_type not in values:
        raise ValidationError(subject, [], f"the '{auth_type}' section is required: {expected}")


def validate_credentials(
    definition: Definition, instance_id: str, values: object
) -> dict[str, Any]:
    """Check credentials against the schema of the definition's authType; return them.

    Only the specification's shape is accepted (``{"oauth2": {...}}``, ``{"apikey":
    {...}}`` or ``{"custom": {...}}``, the definition's own section). Times given as
    epoch seconds are returned as ISO 8601 UTC strings. Messages never echo a value.
    """
    subject = f"Credentials of instance '{instance_id}'"
    if not isinstance(values, Mapping):
        raise ValidationError(subject, [], "credentials must be a JSON object")
    check_json(values, subject=subject)
    _check_sections(definition, subject, values)
    validate(credentials_validator(definition.auth_type), values, subject=subject, secret=True)
    section = oauth2_section(values)
    for name in sorted(TIME_FIELDS & section.keys()):
        try:
            to_epoch(section[name])
        except ValueError as exc:
            raise ValidationError(subject, ["oauth2", name], str(exc)) from None
    normalized = normalize_times(values)
    check_storable(normalized, subject=subject)
    return normalized


def validate_status(instance_id: str, status: object) -> dict[str, Any]:
    """Check a status document against the status schema; return it."""
    subject = f"Status of instance '{instance_id}'"
    validate(status_validator(), status, subject=subject)
    check_storable(status, subject=subject)
    return dict(cast(Mapping[str, Any], status))


def usable(definition: Definition, credentials: Mapping[str, Any] | None) -> bool:
    """True when the credentials let the instance work (so it can be ``active``)."""
    if not credentials:
        return False
    if definition.auth_type == "oauth2":
        section = oauth2_section(credentials)
        if definition.grant_type == "client_credentials":
            return "client_id" in section  # tokens are fetched with the client on first use
        return "access_token" in section
    return True
