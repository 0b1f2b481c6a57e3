"""The definitions mirror: `integration_definitions` kept equal to the definition files."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from prefect_integrations.db import translate_errors
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import DefinitionError, DefinitionProblem
from prefect_integrations.models import definitions, instances
from prefect_integrations.store import audit
from prefect_integrations.store.audit import AuditAction

__all__ = [
    "DefinitionDrift",
    "StoredDefinition",
    "SyncReport",
    "definition_drift",
    "definition_uuid",
    "list_definitions",
    "sync_definitions",
]


#: Definition fields stored in a column of their own; the others go to ``extensions``.
_COLUMN_FIELDS = {
    "integrationId": "integration_id",
    "name": "name",
    "description": "description",
    "version": "version",
    "methods": "methods",
    "configSchema": "config_schema",
    "authType": "auth_type",
    "oauth2Config": "oauth2_config",
}


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    """A row of `integration_definitions` with its instance count."""

    uuid: uuid.UUID
    id: str
    name: str
    version: str
    description: str | None
    updated_at: datetime | None
    instance_count: int
    definition: dict[str, Any] = field(repr=False)


def _row_values(document: Mapping[str, Any]) -> dict[str, Any]:
    """The column values of one definition document (the specification's fields as columns)."""
    values = {column: document.get(name) for name, column in _COLUMN_FIELDS.items()}
    values["extensions"] = {k: v for k, v in document.items() if k not in _COLUMN_FIELDS}
    return values


def _document(row: Any) -> dict[str, Any]:
    """The definition document a row holds, in the file's format."""
    document: dict[str, Any] = {}
    for name, column in _COLUMN_FIELDS.items():
        value = getattr(row, column)
        if value is not None:
            document[name] = value
    document.update(row.extensions or {})
    return document


@dataclass(slots=True)
class SyncReport:
    """What `sync_definitions` did."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: Definitions gone from the files that still have instances: id -> instance count.
    orphaned: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """True when the table changed."""
        return bool(self.created or self.updated or self.removed)

    def counts(self) -> str:
        """``created N, updated N, unchanged N, removed N``."""
        return (
            f"created {len(self.created)}, updated {len(self.updated)}, "
            f"unchanged {len(self.unchanged)}, removed {len(self.removed)}"
        )

    def warnings(self) -> list[str]:
        """One line per definition gone from the files that still has instances."""
        return [
            f"definition '{integration_id}' is no longer in the files but has {count} "
            "instance(s); kept"
            for integration_id, count in sorted(self.orphaned.items())
        ]


def sync_definitions(session: Session, registry: Registry, *, actor: str) -> SyncReport:
    """Upsert every definition of ``registry``; idempotent.

    ``updated_at`` moves only when a definition's content changed. A stored definition
    that is no longer in the files is deleted when it has no instances and reported in
    ``orphaned`` otherwise.
    """
    report = SyncReport()
    with translate_errors("sync definitions"):
        _refuse_auth_type_changes(session, registry)
        for definition in registry:
            stmt = pg_insert(definitions).values(**_row_values(definition.raw))
            excluded = stmt.excluded
            columns = [*_COLUMN_FIELDS.values(), "extensions"]
            columns.remove("integration_id")
            changed = sa.tuple_(*(definitions.c[c] for c in columns)).is_distinct_from(
                sa.tuple_(*(excluded[c] for c in columns))
            )
            upsert = stmt.on_conflict_do_update(
                index_elements=[definitions.c.integration_id],
                set_={**{c: excluded[c] for c in columns}, "updated_at": sa.func.now()},
                where=changed,
            )
            inserted = sa.literal_column("xmax = 0", sa.Boolean).label("inserted")
            row = session.execute(upsert.returning(inserted)).first()
            if row is None:
                report.unchanged.append(definition.id)
                continue
            action = (
                AuditAction.DEFINITION_CREATE if row.inserted else AuditAction.DEFINITION_UPDATE
            )
            (report.created if row.inserted else report.updated).append(definition.id)
            audit.record(
                session,
                action=action,
                actor=actor,
                integration_id=definition.id,
                details={"version": definition.version, "source": definition.source},
            )

        known = set(registry.ids())
        counts = (
            sa.select(
                definitions.c.id,
                definitions.c.integration_id,
                sa.func.count(instances.c.id).label("n"),
            )
            .select_from(definitions.outerjoin(instances))
            .group_by(definitions.c.id)
        )
        for row in session.execute(counts):
            if row.integration_id in known:
                continue
            if row.n:
                report.orphaned[row.integration_id] = int(row.n)
                continue
            session.execute(sa.delete(definitions).where(definitions.c.id == row.id))
            report.removed.append(row.integration_id)
            audit.record(
                session,
                action=AuditAction.DEFINITION_DELETE,
                actor=actor,
                integration_id=row.integration_id,
            )
    return report


def _refuse_auth_type_changes(session: Session, registry: Registry) -> None:
    """Refuse a definition whose ``authType`` changes while instances use it.

    Their stored credentials are of the old kind: the change would leave every one of
    them unusable without saying so.
    """
    stored = session.execute(
        sa.select(
            definitions.c.integration_id,
            definitions.c.auth_type,
            sa.func.count(instances.c.id).label("n"),
        )
        .select_from(definitions.outerjoin(instances))
        .group_by(definitions.c.id)
    ).all()
    for row in stored:
        if row.integration_id in registry and row.n:
            new = registry.get(row.integration_id)
            if new.auth_type != row.auth_type:
                raise DefinitionError(
                    [
                        DefinitionProblem(
                            source=new.source,
                            path=("authType",),
                            message=(
                                f"changes from '{row.auth_type}' to '{new.auth_type}' while "
                                f"{row.n} instance(s) use integration '{row.integration_id}'; "
                                "delete or move them first"
                            ),
                        )
                    ]
                )


def list_definitions(session: Session) -> list[StoredDefinition]:
    """Every stored definition with how many instances use it, by id."""
    query = (
        sa.select(definitions, sa.func.count(instances.c.id).label("n"))
        .select_from(definitions.outerjoin(instances))
        .group_by(definitions.c.id)
        .order_by(definitions.c.integration_id)
    )
    with translate_errors("list definitions"):
        rows = session.execute(query).all()
    return [
        StoredDefinition(
            uuid=r.id,
            id=r.integration_id,
            name=r.name,
            version=r.version,
            description=r.description,
            updated_at=r.updated_at,
            instance_count=int(r.n),
            definition=_document(r),
        )
        for r in rows
    ]


def definition_uuid(session: Session, integration_id: str) -> uuid.UUID | None:
    """The primary key of the stored definition ``integration_id``, or None.

    Driver errors are left to the caller's `translate_errors`, which names its operation.
    """
    found: uuid.UUID | None = session.execute(
        sa.select(definitions.c.id).where(definitions.c.integration_id == integration_id)
    ).scalar()
    return found


@dataclass(frozen=True, slots=True)
class DefinitionDrift:
    """Where the definitions a process loaded differ from the stored ones that have instances.

    ``missing``: integration id -> instance count, stored with instances but not loaded;
    ``differs``: integration id -> (stored version, loaded version), loaded with other
    content than the stored row.
    """

    missing: dict[str, int]
    differs: dict[str, tuple[str, str]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.differs)


def definition_drift(
    session: Session,
    registry: Registry,
    *,
    integrations: Sequence[str] | None = None,
    instance_ids: Sequence[str] | None = None,
) -> DefinitionDrift:
    """Compare the stored definitions that have instances with ``registry``'s.

    Only those of ``integrations`` / of the instances ``instance_ids`` when given. The
    content is compared in PostgreSQL, as `sync_definitions` decides a change (jsonb
    equality: ``1e23`` in a file equals the number jsonb stores for it).
    """
    query = (
        sa.select(definitions.c.integration_id, sa.func.count(instances.c.id).label("n"))
        .select_from(definitions.join(instances))
        .group_by(definitions.c.integration_id)
    )
    if integrations:
        query = query.where(definitions.c.integration_id.in_(list(integrations)))
    if instance_ids:
        query = query.where(instances.c.instance_id.in_(list(instance_ids)))
    missing: dict[str, int] = {}
    differs: dict[str, tuple[str, str]] = {}
    with translate_errors("compare the stored definitions"):
        for row in session.execute(query).all():
            if row.integration_id not in registry:
                missing[row.integration_id] = int(row.n)
                continue
            loaded = registry.get(row.integration_id)
            values = _row_values(loaded.raw)
            columns = [c for c in values if c != "integration_id"]
            changed = sa.tuple_(*(definitions.c[c] for c in columns)).is_distinct_from(
                sa.tuple_(
                    *(sa.bindparam(None, values[c], type_=definitions.c[c].type) for c in columns)
                )
            )
            stored_version = session.execute(
                sa.select(definitions.c.version).where(
                    definitions.c.integration_id == row.integration_id, changed
                )
            ).scalar()
            if stored_version is not None:
                differs[row.integration_id] = (stored_version, loaded.version)
    return DefinitionDrift(missing=missing, differs=differs)
