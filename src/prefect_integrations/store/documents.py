"""Instance documents in the specification's JSON: apply (create or update) and export.

`apply_documents` is ``kubectl apply`` for instances: it takes one document or a list,
checks every one of them first (shape, integration, scope, config against the
definition's ``configSchema``, credentials, status; no instance id twice; no change of
integration) and only then writes, in the caller's transaction, so one bad document
writes nothing. Applying the same documents again changes nothing. ``credentials`` that
are given are stored encrypted (and compared with the stored ones first, so an unchanged
secret is not written again); ``{}`` or no ``credentials`` keeps what is stored.

Every error names the document (its position and instance id) and the JSON path inside
the input, e.g. ``Instance document [1] ('xero_acme') is invalid at
$[1].config.tenant_id: ...``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, cast

from jsonschema import Draft202012Validator
from sqlalchemy.orm import Session

from prefect_integrations.db import translate_errors
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import (
    CredentialsError,
    IntegrationError,
    ValidationError,
    quote,
)
from prefect_integrations.keyring import Keyring
from prefect_integrations.scope import ContextType, Scope
from prefect_integrations.store import instance_checks as checks
from prefect_integrations.store import instances as store
from prefect_integrations.store import vault
from prefect_integrations.store.definitions import definition_uuid
from prefect_integrations.validation import compile_schema, load_packaged_schema, validate

__all__ = ["Applied", "InstanceDocument", "apply_documents", "parse_documents"]

Action = Literal["created", "updated", "unchanged"]

#: Fields that `instances show` prints beside the specification's; ignored on apply.
_SHOWN_ONLY = frozenset(
    {"keyId", "credentialsVersion", "tokenExpiresAt", "createdAt", "updatedAt", "lastUsedAt"}
)


@dataclass(frozen=True, slots=True)
class InstanceDocument:
    """One checked instance document, ready to be written."""

    position: tuple[int, ...]
    instance_id: str
    integration_id: str
    name: str
    #: What the document leaves out is kept for an existing instance (`UNSET`).
    description: str | store.Unset | None
    #: None when the document gives no ``context``: global for a new instance, kept otherwise.
    scope: Scope | None
    config: dict[str, Any] | store.Unset
    credentials: dict[str, Any] | None = field(repr=False)
    status: dict[str, Any] | None

    @property
    def label(self) -> str:
        """How errors name the document: its position in the input and its instance id."""
        return _subject(self.position, self.instance_id)


@dataclass(frozen=True, slots=True)
class Applied:
    """What `apply_documents` did to one instance."""

    instance_id: str
    action: Action
    fields: tuple[str, ...] = ()


def _subject(position: tuple[int, ...], instance_id: object) -> str:
    where = "".join(f"[{p}]" for p in position)
    named = f" ({quote(instance_id)})" if isinstance(instance_id, str) and instance_id else ""
    return f"Instance document{' ' + where if where else ''}{named}"


def _unknown_field(raw: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first field the document may not have, with a hint at the one meant."""
    allowed = list(_document_schema()["properties"])
    for key in raw:
        if key in allowed:
            continue
        camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), str(key))
        close = [a for a in allowed if a.lower() == camel.lower()] or difflib.get_close_matches(
            str(key), allowed, n=1
        )
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return str(key), f"unknown field {quote(str(key))}{hint} (allowed: {', '.join(allowed)})"
    return None


@cache
def _document_schema() -> dict[str, Any]:
    return load_packaged_schema("instance.schema.json")


@cache
def _document_validator() -> Draft202012Validator:
    # Credentials are checked apart, by the store, which never echoes a secret.
    schema = dict(_document_schema())
    schema["properties"] = {**schema["properties"], "credentials": {}}
    return compile_schema(schema)


def _refine(error: IntegrationError, subject: str, prefix: Sequence[str | int]) -> ValidationError:
    """``error`` restated for the document: its subject and the path inside the input."""
    if isinstance(error, ValidationError):
        return ValidationError(subject, (*prefix, *error.path), error.reason)
    return ValidationError(subject, tuple(prefix), str(error))


def _check_one(raw: object, position: tuple[int, ...], registry: Registry) -> InstanceDocument:
    root: tuple[str | int, ...] = position
    subject = _subject(position, raw.get("instanceId") if isinstance(raw, Mapping) else None)
    if not isinstance(raw, Mapping):
        raise ValidationError(subject, root, "must be a JSON object (an instance document)")
    unknown = _unknown_field(raw)
    if unknown is not None:
        raise ValidationError(subject, (*root, unknown[0]), unknown[1])
    try:
        validate(_document_validator(), raw, subject=subject)
    except ValidationError as exc:
        raise _refine(exc, subject, root) from None
    credentials = raw.get("credentials")
    if credentials is not None and not isinstance(credentials, Mapping):
        raise ValidationError(
            subject, (*root, "credentials"), "must be a JSON object (or {} to keep the stored ones)"
        )
    instance_id = str(raw["instanceId"])
    integration_id = str(raw["integrationId"])
    try:
        definition = registry.get(integration_id)
    except IntegrationError as exc:
        raise _refine(exc, subject, (*root, "integrationId")) from None
    context = cast(Mapping[str, Any], raw.get("context") or {"type": "global"})
    try:
        scope = Scope(cast(ContextType, context["type"]), context.get("contextId"))
    except ValidationError as exc:
        key = "contextId" if exc.path[-1:] == ("context_id",) else "type"
        raise ValidationError(subject, (*root, "context", key), exc.reason) from None

    steps: list[tuple[str, Any]] = [
        ("instanceId", lambda: checks.check_instance_id(instance_id)),
        ("name", lambda: checks.check_name(instance_id, str(raw["name"]))),
        ("description", lambda: checks.check_description(instance_id, raw.get("description"))),
        ("config", lambda: checks.check_config(definition, instance_id, raw.get("config", {}))),
    ]
    if raw.get("status") is not None:
        steps.append(("status", lambda: checks.validate_status(instance_id, raw["status"])))
    credentials = credentials or None
    if credentials is not None:
        if "keyId" in credentials:
            raise ValidationError(
                subject,
                (*root, "credentials", "keyId"),
                "these are the stored credentials as `instances show` describes them, not "
                "credentials; give the credentials themselves, or {} to keep the stored ones",
            )
        steps.append(
            (
                "credentials",
                lambda: checks.validate_credentials(definition, instance_id, credentials),
            )
        )
    checked: dict[str, Any] = {}
    for name, step in steps:
        try:
            checked[name] = step()
        except ValidationError as exc:
            # The store's path is inside the field it checked, or names the field itself.
            inner = exc.path[1:] if exc.path[:1] == (name,) else exc.path
            raise ValidationError(subject, (*root, name, *inner), exc.reason) from None
    return InstanceDocument(
        position=position,
        instance_id=instance_id,
        integration_id=integration_id,
        name=str(raw["name"]),
        description=checked["description"] if "description" in raw else store.UNSET,
        scope=scope if raw.get("context") is not None else None,
        config=checked["config"] if "config" in raw else store.UNSET,
        credentials=checked.get("credentials"),
        status=checked.get("status"),
    )


def parse_documents(value: object, registry: Registry) -> list[InstanceDocument]:
    """Check one instance document or a JSON array of them; raise on the first bad one.

    Nothing is read from or written to the database. An instance id given twice is an
    error naming both positions.
    """
    if isinstance(value, list):
        items: list[tuple[tuple[int, ...], object]] = [((i,), v) for i, v in enumerate(value)]
        if not items:
            raise ValidationError("Instance documents", [], "the array is empty")
    elif isinstance(value, Mapping):
        items = [((), value)]
    else:
        raise ValidationError(
            "Instance documents", [], "must be an instance document (a JSON object) or an array"
        )
    documents: list[InstanceDocument] = []
    first: dict[str, InstanceDocument] = {}
    for position, raw in items:
        document = _check_one(raw, position, registry)
        earlier = first.get(document.instance_id)
        if earlier is not None:
            raise ValidationError(
                document.label,
                (*position, "instanceId"),
                f"instance '{document.instance_id}' is already given at "
                f"${''.join(f'[{p}]' for p in earlier.position)}",
            )
        first[document.instance_id] = document
        documents.append(document)
    return documents


def _same_credentials(
    session: Session, keyring: Keyring, instance_id: str, given: Mapping[str, Any], actor: str
) -> bool:
    """True when the stored credentials equal ``given`` (decrypting is audited)."""
    try:
        stored = vault.fetch_credentials(
            session, keyring, instance_id, actor=actor, purpose="instances.apply"
        )
    except CredentialsError:  # none stored, or unreadable: the given ones replace them
        return False
    return stored.reveal() == dict(given)


def _check_against_store(
    session: Session, documents: Sequence[InstanceDocument]
) -> dict[str, store.Instance]:
    """Refuse what the stored rows make impossible, before anything is written."""
    existing = store.get_instances(session, [d.instance_id for d in documents])
    synced: dict[str, bool] = {}
    for document in documents:
        current = existing.get(document.instance_id)
        if current is not None:
            if current.integration_id != document.integration_id:
                raise ValidationError(
                    document.label,
                    (*document.position, "integrationId"),
                    f"instance '{document.instance_id}' exists with integration "
                    f"'{current.integration_id}'; an instance cannot change integration "
                    "(delete it and apply again)",
                )
            continue
        if document.integration_id not in synced:
            with translate_errors("apply instance documents"):
                found = definition_uuid(session, document.integration_id)
            synced[document.integration_id] = found is not None
        if not synced[document.integration_id]:
            raise ValidationError(
                document.label,
                (*document.position, "integrationId"),
                f"integration '{document.integration_id}' is not in the database yet; run "
                "`prefect-integrations definitions sync`",
            )
    return existing


def apply_documents(
    session: Session,
    registry: Registry,
    keyring: Keyring | None,
    value: object,
    *,
    actor: str,
    on_applied: Callable[[Applied], None] | None = None,
) -> list[Applied]:
    """Create or update the instances described by ``value``; all or nothing.

    ``value`` is one instance document or a list of them. Every document is checked
    before the first write; the writes share the caller's transaction, so a failure part
    way leaves nothing written once the caller rolls back. Returns what happened to each
    instance, in input order; ``on_applied`` is told each as it is written (progress).
    """
    documents = parse_documents(value, registry)
    if keyring is None and any(d.credentials for d in documents):
        first = next(d for d in documents if d.credentials)
        raise ValidationError(
            first.label, (*first.position, "credentials"), "no keyring to encrypt with"
        )
    existing = _check_against_store(session, documents)
    results: list[Applied] = []
    for document in documents:
        current = existing.get(document.instance_id)
        if current is None:
            store.create_instance(
                session,
                registry,
                keyring,
                instance_id=document.instance_id,
                integration_id=document.integration_id,
                name=document.name,
                description=None
                if isinstance(document.description, store.Unset)
                else document.description,
                scope=document.scope or Scope("global"),
                config={} if isinstance(document.config, store.Unset) else document.config,
                credentials=document.credentials,
                status=document.status,
                actor=actor,
            )
            results.append(Applied(document.instance_id, "created"))
            if on_applied is not None:
                on_applied(results[-1])
            continue
        changed = store.update_instance(
            session,
            registry,
            document.instance_id,
            name=document.name,
            description=document.description,
            config=None if isinstance(document.config, store.Unset) else document.config,
            scope=document.scope,
            actor=actor,
        )
        fields = [
            name
            for name, before, after in (
                ("name", current.name, changed.name),
                ("description", current.description, changed.description),
                ("context", current.scope, changed.scope),
                ("config", current.config, changed.config),
            )
            if before != after
        ]
        if (
            document.credentials is not None
            and keyring is not None
            and not _same_credentials(
                session, keyring, document.instance_id, document.credentials, actor
            )
        ):
            store.set_credentials(
                session,
                registry,
                keyring,
                document.instance_id,
                document.credentials,
                actor=actor,
            )
            fields.append("credentials")
        action: Action = "updated" if fields else "unchanged"
        results.append(Applied(document.instance_id, action, tuple(fields)))
        if on_applied is not None:
            on_applied(results[-1])
    return results
