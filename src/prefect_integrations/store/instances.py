"""Integration instances: one connected account each, scoped global / client / user.

Every write validates its input first (config against the definition's configSchema,
credentials against the credentials schema of the definition's authType, status against
the status schema) and appends an audit row in the caller's transaction, so a failure
leaves nothing half-written.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from prefect_integrations.credentials import (
    SECTIONS,
    TIME_FIELDS,
    EncryptedCredentials,
    field_paths,
    normalize_times,
    oauth2_section,
    spec_example,
    to_epoch,
)
from prefect_integrations.db import translate_errors
from prefect_integrations.definitions import Definition, Registry
from prefect_integrations.exceptions import (
    DefinitionError,
    InstanceExists,
    InstanceNotFound,
    ValidationError,
)
from prefect_integrations.keyring import Keyring
from prefect_integrations.models import definitions, instances
from prefect_integrations.scope import ContextType, Scope
from prefect_integrations.store import audit, vault
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.store.definitions import definition_uuid
from prefect_integrations.validation import (
    check_json,
    check_storable,
    credentials_validator,
    status_validator,
    validate,
)

__all__ = [
    "UNSET",
    "Instance",
    "Unset",
    "check_config",
    "check_description",
    "check_instance_id",
    "check_name",
    "create_instance",
    "delete_instance",
    "get_instance",
    "get_instances",
    "instance_from_row",
    "instances_query",
    "list_instances",
    "require_instance",
    "set_credentials",
    "update_instance",
    "validate_credentials",
    "validate_status",
]

_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
_UNIQUE_INSTANCE_ID = "integration_instances_instance_id_idx"


def instances_query() -> sa.Select[Any]:
    """SELECT of instance rows with their definition's ``integration_id``.

    Instances refer to their definition by ``integration_definition_id`` (the spec's
    schema); every read of instances goes through this join so rows carry the
    integration id that the rest of the package speaks.
    """
    return sa.select(instances, definitions.c.integration_id).join_from(
        instances, definitions, instances.c.integration_definition_id == definitions.c.id
    )


@dataclass(frozen=True, slots=True)
class Instance:
    """A stored instance, without its ciphertext."""

    uuid: uuid.UUID
    instance_id: str
    integration_id: str
    name: str
    description: str | None
    scope: Scope
    config: dict[str, Any]
    status: dict[str, Any]
    credentials: EncryptedCredentials | None = field(repr=False)
    created_at: datetime | None
    updated_at: datetime | None
    last_used_at: datetime | None
    token_expires_at: datetime | None
    credentials_version: int

    @property
    def state(self) -> str:
        """``active``, ``inactive`` or ``error``."""
        return str(self.status.get("state", "inactive"))

    @property
    def has_credentials(self) -> bool:
        """True when credentials are stored."""
        return self.credentials is not None

    def as_document(self, *, secrets_metadata: bool = True) -> dict[str, Any]:
        """The specification's instance document, never with a secret value.

        ``credentials`` holds the stored non-secret facts (field names, token type, scope,
        expiry, key id) with ``secrets_metadata``, and is ``{}`` otherwise (as `instances
        export` prints it, ready to be applied again). The package's own facts
        (``createdAt``, ``updatedAt``, ``lastUsedAt``, ``keyId``, ``tokenExpiresAt``,
        ``credentialsVersion``) follow the specification's fields.
        """
        document: dict[str, Any] = {
            "instanceId": self.instance_id,
            "integrationId": self.integration_id,
            "name": self.name,
        }
        if self.description is not None:
            document["description"] = self.description
        document["context"] = self.scope.as_document()
        creds: dict[str, Any] = {}
        if secrets_metadata and self.credentials is not None:
            creds = _described(self.credentials)
        document["credentials"] = creds
        document["config"] = self.config
        document["status"] = self.status
        if secrets_metadata:
            document.update(
                {
                    "keyId": self.credentials.key_id if self.credentials else None,
                    "credentialsVersion": self.credentials_version,
                    "tokenExpiresAt": _iso(self.token_expires_at),
                    "createdAt": _iso(self.created_at),
                    "updatedAt": _iso(self.updated_at),
                    "lastUsedAt": _iso(self.last_used_at),
                }
            )
        return document


def _described(credentials: EncryptedCredentials) -> dict[str, Any]:
    """Stored credentials as the specification's sections holding only non-secret facts.

    ``{"oauth2": {"fields": [...], "token_type": ..., "expires_at": ...}, "keyId": ...}``;
    a row written before the sections were used shows its flat facts as they are.
    """
    facts = dict(credentials.metadata)
    kind = facts.pop("kind", None)
    described: dict[str, Any] = {kind: facts} if isinstance(kind, str) else facts
    described["keyId"] = credentials.key_id
    return described


def _iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``, as the credentials' times are written."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def instance_from_row(row: sa.Row[Any]) -> Instance:
    """Build an `Instance` from a row of ``integration_instances``."""
    envelope = row.credentials
    return Instance(
        uuid=row.id,
        instance_id=row.instance_id,
        integration_id=row.integration_id,
        name=row.name,
        description=row.description,
        scope=Scope(cast(ContextType, row.context_type), row.context_id),
        config=dict(row.config or {}),
        status=dict(row.status or {}),
        credentials=EncryptedCredentials.from_envelope(envelope) if envelope else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_used_at=row.last_used_at,
        token_expires_at=row.token_expires_at,
        credentials_version=int(row.credentials_version),
    )


def check_instance_id(instance_id: str) -> None:
    """Refuse an instance id that is not 1-255 letters, digits, "_", "." or "-"."""
    if not _INSTANCE_ID.fullmatch(instance_id):
        raise ValidationError(
            "Instance id",
            [],
            f"{instance_id[:80]!r} must be 1-255 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
        )


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


class Unset(enum.Enum):
    """The type of `UNSET`: an argument that was not given (as opposed to None)."""

    UNSET = "UNSET"


#: A keyword argument left out, where None has a meaning of its own (clear the value).
UNSET = Unset.UNSET


def check_config(definition: Definition, instance_id: str, config: object) -> dict[str, Any]:
    """The config as a dict if it is a JSON object valid for the definition's configSchema."""
    subject = f"Config of instance '{instance_id}'"
    if not isinstance(config, Mapping):
        raise ValidationError(subject, [], "config must be a JSON object")
    values = dict(config)
    definition.validate_config(values, subject=subject)
    check_storable(values, subject=subject)
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


def _usable(definition: Definition, credentials: Mapping[str, Any] | None) -> bool:
    if not credentials:
        return False
    if definition.auth_type == "oauth2":
        section = oauth2_section(credentials)
        if definition.grant_type == "client_credentials":
            return "client_id" in section  # tokens are fetched with the client on first use
        return "access_token" in section
    return True


def get_instance(session: Session, instance_id: str) -> Instance | None:
    """The instance with that id, or None."""
    with translate_errors(f"read instance '{instance_id}'"):
        row = session.execute(
            instances_query().where(instances.c.instance_id == instance_id)
        ).first()
    return instance_from_row(row) if row else None


def get_instances(session: Session, instance_ids: Sequence[str]) -> dict[str, Instance]:
    """The instances among ``instance_ids`` that exist, by id, in one query."""
    with translate_errors("read instances"):
        rows = session.execute(
            instances_query().where(instances.c.instance_id.in_(list(instance_ids)))
        )
        return {row.instance_id: instance_from_row(row) for row in rows}


def require_instance(session: Session, instance_id: str) -> Instance:
    """The instance with that id; `InstanceNotFound` otherwise."""
    found = get_instance(session, instance_id)
    if found is None:
        raise InstanceNotFound(instance_id)
    return found


def list_instances(
    session: Session,
    *,
    integration_id: str | None = None,
    scope: Scope | None = None,
    context_type: ContextType | None = None,
    state: str | None = None,
) -> list[Instance]:
    """Instances matching every filter given, ordered by instance id."""
    query = instances_query().order_by(instances.c.instance_id)
    if integration_id is not None:
        query = query.where(definitions.c.integration_id == integration_id)
    if scope is not None:
        query = query.where(instances.c.context_type == scope.context_type)
        query = query.where(instances.c.context_id.is_not_distinct_from(scope.context_id))
    if context_type is not None:
        query = query.where(instances.c.context_type == context_type)
    if state is not None:
        query = query.where(instances.c.status.contains({"state": state}))
    with translate_errors("list instances"):
        return [instance_from_row(r) for r in session.execute(query)]


def create_instance(
    session: Session,
    registry: Registry,
    keyring: Keyring | None,
    *,
    instance_id: str,
    integration_id: str,
    name: str,
    scope: Scope,
    description: str | None = None,
    config: Mapping[str, Any] | None = None,
    credentials: Mapping[str, Any] | None = None,
    status: Mapping[str, Any] | None = None,
    actor: str,
) -> Instance:
    """Create an instance (credentials encrypted when given) and audit it.

    The state starts ``active`` when usable credentials are given (an API key, an access
    token) and ``inactive`` otherwise (e.g. OAuth2 waiting to be connected), unless
    ``status`` says otherwise.
    """
    check_instance_id(instance_id)
    check_name(instance_id, name)
    check_description(instance_id, description)
    definition = registry.get(integration_id)
    config = check_config(definition, instance_id, {} if config is None else config)
    creds = None
    if credentials is not None:
        creds = validate_credentials(definition, instance_id, credentials)
        if keyring is None:
            raise ValidationError(
                f"Instance '{instance_id}'", ["credentials"], "no keyring to encrypt with"
            )
    if status is None:
        state = "active" if _usable(definition, creds) else "inactive"
        status = {"state": state}
    status_doc = validate_status(instance_id, status)
    with translate_errors(f"create instance '{instance_id}'"):
        definition_id = definition_uuid(session, integration_id)
    if definition_id is None:
        raise DefinitionError(
            f"Integration '{integration_id}' is not in the database yet; "
            "run `prefect-integrations definitions sync`"
        )

    values = {
        "instance_id": instance_id,
        "integration_definition_id": definition_id,
        "name": name,
        "description": description,
        "context_type": scope.context_type,
        "context_id": scope.context_id,
        "config": config,
        "status": status_doc,
    }
    with translate_errors(f"create instance '{instance_id}'"):
        try:
            with session.begin_nested():
                session.execute(sa.insert(instances).values(**values))
        except sa_exc.IntegrityError as exc:
            constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", "")
            if constraint == _UNIQUE_INSTANCE_ID:
                raise InstanceExists(instance_id) from None
            raise
    if creds is not None and keyring is not None:
        vault.store_credentials(session, keyring, instance_id, creds)
    audit.record(
        session,
        action=AuditAction.INSTANCE_CREATE,
        actor=actor,
        instance_id=instance_id,
        integration_id=integration_id,
        details={
            "context": str(scope),
            "config_keys": sorted(config),
            "credentials_fields": field_paths(creds) if creds else [],
            "state": status_doc["state"],
        },
    )
    return require_instance(session, instance_id)


def update_instance(
    session: Session,
    registry: Registry,
    instance_id: str,
    *,
    name: str | None = None,
    description: str | Unset | None = UNSET,
    config: Mapping[str, Any] | None = None,
    status: Mapping[str, Any] | None = None,
    scope: Scope | None = None,
    actor: str,
) -> Instance:
    """Change the name, description, config, status or scope of an instance; audited.

    Only what differs from the stored row is written (and audited); an update that
    changes nothing writes nothing. ``description=None`` clears the description.
    """
    current = require_instance(session, instance_id)
    changes: dict[str, Any] = {}
    if name is not None and name != current.name:
        changes["name"] = check_name(instance_id, name)
    if not isinstance(description, Unset) and description != current.description:
        changes["description"] = check_description(instance_id, description)
    if config is not None:
        definition = registry.get(current.integration_id)
        checked = check_config(definition, instance_id, config)
        if checked != current.config:
            changes["config"] = checked
    if status is not None:
        checked = validate_status(instance_id, status)
        if checked != current.status:
            changes["status"] = checked
    if scope is not None and scope != current.scope:
        changes["context_type"] = scope.context_type
        changes["context_id"] = scope.context_id
    if not changes:
        return current
    changes["updated_at"] = sa.func.now()
    with translate_errors(f"update instance '{instance_id}'"):
        session.execute(
            sa.update(instances).where(instances.c.instance_id == instance_id).values(**changes)
        )
    audit.record(
        session,
        action=AuditAction.INSTANCE_UPDATE,
        actor=actor,
        instance_id=instance_id,
        integration_id=current.integration_id,
        details={"fields": sorted(k for k in changes if k != "updated_at")},
    )
    return require_instance(session, instance_id)


def set_credentials(
    session: Session,
    registry: Registry,
    keyring: Keyring,
    instance_id: str,
    credentials: Mapping[str, Any],
    *,
    actor: str,
    activate: bool = True,
) -> Instance:
    """Validate, encrypt and store new credentials; audited.

    With ``activate``, an instance that was ``inactive`` becomes ``active`` when the new
    credentials are usable.
    """
    current = require_instance(session, instance_id)
    definition = registry.get(current.integration_id)
    creds = validate_credentials(definition, instance_id, credentials)
    version = vault.store_credentials(session, keyring, instance_id, creds)
    assert version is not None
    if activate and current.state == "inactive" and _usable(definition, creds):
        with translate_errors(f"update instance '{instance_id}'"):
            session.execute(
                sa.update(instances)
                .where(instances.c.instance_id == instance_id)
                .values(status={**current.status, "state": "active"})
            )
    audit.record(
        session,
        action=AuditAction.CREDENTIALS_SET,
        actor=actor,
        instance_id=instance_id,
        integration_id=current.integration_id,
        details={
            "fields": field_paths(creds),
            "key_id": keyring.primary_id,
            "credentials_version": version,
        },
    )
    return require_instance(session, instance_id)


def delete_instance(session: Session, instance_id: str, *, actor: str) -> None:
    """Delete an instance and its credentials; audited."""
    integration_id = (
        sa.select(definitions.c.integration_id)
        .where(definitions.c.id == instances.c.integration_definition_id)
        .scalar_subquery()
    )
    with translate_errors(f"delete instance '{instance_id}'"):
        deleted = session.execute(
            sa.delete(instances)
            .where(instances.c.instance_id == instance_id)
            .returning(integration_id)
        ).scalar()
    if deleted is None:
        raise InstanceNotFound(instance_id)
    audit.record(
        session,
        action=AuditAction.INSTANCE_DELETE,
        actor=actor,
        instance_id=instance_id,
        integration_id=deleted,
    )
