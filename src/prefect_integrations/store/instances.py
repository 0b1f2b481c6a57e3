"""Integration instances: one connected account each, scoped global / client / user.

Every write validates its input first (config against the definition's configSchema,
credentials against the credentials schema of the definition's authType, status against
the status schema) and appends an audit row in the caller's transaction, so a failure
leaves nothing half-written.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from prefect_integrations.credentials import field_paths
from prefect_integrations.db import translate_errors
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import (
    DefinitionError,
    InstanceError,
    InstanceExists,
    InstanceNotFound,
    ValidationError,
)
from prefect_integrations.keyring import Keyring
from prefect_integrations.models import definitions, instances
from prefect_integrations.scope import Context, ContextType, Scope
from prefect_integrations.store import audit, vault
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.store.definitions import definition_uuid
from prefect_integrations.store.instance_checks import (
    check_config,
    check_context,
    check_description,
    check_instance_id,
    check_name,
    check_scope,
    usable,
    validate_credentials,
    validate_status,
)
from prefect_integrations.store.instance_model import Instance, instance_from_row, instances_query
from prefect_integrations.store.status import write_status
from prefect_integrations.store.url_overrides import url_override_changes

__all__ = [
    "UNSET",
    "Instance",
    "Unset",
    "create_instance",
    "delete_instance",
    "expiring_instance_ids",
    "get_instance",
    "get_instances",
    "list_instances",
    "require_instance",
    "set_credentials",
    "update_instance",
    "visible_instances",
]

#: The state a new row starts in (the column's default) until its status is written.
_INITIAL_STATE = "inactive"
_UNIQUE_INSTANCE_ID = "integration_instances_instance_id_idx"


class Unset(enum.Enum):
    """The type of `UNSET`: an argument that was not given (as opposed to None)."""

    UNSET = "UNSET"


#: A keyword argument left out, where None has a meaning of its own (clear the value).
UNSET = Unset.UNSET


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
    check_scope(instance_id, scope)
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
        state = "active" if usable(definition, creds) else "inactive"
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
    if status_doc != {"state": _INITIAL_STATE}:
        write_status(
            session, instance_id, status_doc, expected_state=_INITIAL_STATE, reason="created"
        )
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
            **_overrides(None, config),
        },
    )
    return require_instance(session, instance_id)


def _overrides(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Audit detail of the URL overrides set or changed (not secrets: old and new values)."""
    changed = url_override_changes(old, new)
    return {"url_overrides": changed} if changed else {}


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
    reason: str = "updated",
) -> Instance:
    """Change the name, description, config, status or scope of an instance; audited.

    Only what differs from the stored row is written (and audited); an update that
    changes nothing writes nothing. ``description=None`` clears the description. A new
    status replaces whatever state the instance is in; ``reason`` goes with the event
    a state change emits.
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
    new_status = None
    if status is not None:
        new_status = validate_status(instance_id, status)
        if new_status == current.status:
            new_status = None
    if scope is not None and scope != current.scope:
        check_scope(instance_id, scope)
        changes["context_type"] = scope.context_type
        changes["context_id"] = scope.context_id
    if not changes and new_status is None:
        return current
    if changes:
        changes["updated_at"] = sa.func.now()
        with translate_errors(f"update instance '{instance_id}'"):
            session.execute(
                sa.update(instances).where(instances.c.instance_id == instance_id).values(**changes)
            )
    if new_status is not None:
        _replace_status(session, current, new_status, reason=reason)
        changes["status"] = new_status
    audit.record(
        session,
        action=AuditAction.INSTANCE_UPDATE,
        actor=actor,
        instance_id=instance_id,
        integration_id=current.integration_id,
        details={
            "fields": sorted(k for k in changes if k != "updated_at"),
            **_overrides(current.config, changes.get("config", current.config)),
        },
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
    if activate and current.state == "inactive" and usable(definition, creds):
        # Only while still inactive: a state set meanwhile is not overridden.
        write_status(
            session,
            instance_id,
            {**current.status, "state": "active"},
            expected_state="inactive",
            reason="credentials_set",
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


def _replace_status(
    session: Session, current: Instance, status: Mapping[str, Any], *, reason: str
) -> None:
    """Write an operator's status whatever the state is (re-read if it just changed)."""
    state = current.state
    for _ in range(5):
        if write_status(
            session, current.instance_id, status, expected_state=state, reason=reason, touch=True
        ):
            return
        state = require_instance(session, current.instance_id).state
    raise InstanceError(f"The status of instance '{current.instance_id}' keeps changing; try again")


def visible_instances(
    session: Session,
    context: Context,
    *,
    integration_id: str,
    instance_id: str | None = None,
) -> list[Instance]:
    """Instances visible in ``context``, ordered by instance id.

    Visible: ``global``, ``client`` with the context's client id, ``user`` with its user
    id. Ids outside `~prefect_integrations.scope.CONTEXT_ID_RULE` are refused
    (`ValidationError`), never taken as absent. Those of ``integration_id``, or only
    ``instance_id`` (whatever its integration) when given.
    """
    check_context(context)
    visible: list[sa.ColumnElement[bool]] = [instances.c.context_type == "global"]
    if context.client_id is not None:
        visible.append(
            sa.and_(
                instances.c.context_type == "client", instances.c.context_id == context.client_id
            )
        )
    if context.user_id is not None:
        visible.append(
            sa.and_(instances.c.context_type == "user", instances.c.context_id == context.user_id)
        )
    query = instances_query().where(sa.or_(*visible))
    if instance_id is not None:
        query = query.where(instances.c.instance_id == instance_id)
    else:
        query = query.where(definitions.c.integration_id == integration_id)
    with translate_errors(f"resolve an instance of '{integration_id}'"):
        return [
            instance_from_row(r) for r in session.execute(query.order_by(instances.c.instance_id))
        ]


def expiring_instance_ids(session: Session, *, horizon: float, limit: int) -> list[str]:
    """Active instances whose token expires within ``horizon`` seconds, soonest first.

    Served by the partial index on ``token_expires_at``.
    """
    query = (
        sa.select(instances.c.instance_id)
        .where(instances.c.token_expires_at.is_not(None))
        .where(
            instances.c.token_expires_at
            < sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, horizon)
        )
        .where(instances.c.status["state"].astext == "active")
        .order_by(instances.c.token_expires_at)
        .limit(limit)
    )
    with translate_errors("find expiring tokens"):
        return list(session.execute(query).scalars())


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
