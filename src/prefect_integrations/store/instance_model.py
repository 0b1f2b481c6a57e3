"""The stored instance as the package speaks it: the `Instance` dataclass and row mapping.

Instances refer to their definition by ``integration_definition_id``; every read of
instances goes through `instances_query` so rows carry the integration id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from prefect_integrations.credentials import EncryptedCredentials
from prefect_integrations.exceptions import InstanceUnavailable
from prefect_integrations.models import definitions, instances
from prefect_integrations.scope import Scope

__all__ = ["Instance", "instance_from_row", "instances_query"]


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

    def unavailable(self) -> InstanceUnavailable:
        """The error of using this instance while it is not active, with its stored reason."""
        words = "in error" if self.state == "error" else self.state
        reason = self.status.get("error")
        return InstanceUnavailable(
            f"Instance '{self.instance_id}' is {words}" + (f": {reason}" if reason else "")
        )

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
        scope=Scope.stored(row.context_type, row.context_id),
        config=dict(row.config or {}),
        status=dict(row.status or {}),
        credentials=EncryptedCredentials.from_envelope(envelope) if envelope else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_used_at=row.last_used_at,
        token_expires_at=row.token_expires_at,
        credentials_version=int(row.credentials_version),
    )
