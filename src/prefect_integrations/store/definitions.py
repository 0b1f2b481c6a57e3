"""The definitions mirror: `integration_definitions` kept equal to the definition files."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from prefect_integrations.db import translate_errors
from prefect_integrations.models import definitions, instances
from prefect_integrations.registry import Registry
from prefect_integrations.store import audit

__all__ = ["StoredDefinition", "SyncReport", "list_definitions", "sync_definitions"]


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    """A row of `integration_definitions` with its instance count."""

    id: str
    name: str
    version: str
    description: str | None
    updated_at: datetime | None
    instance_count: int
    definition: dict[str, Any] = field(repr=False)


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


def sync_definitions(session: Session, registry: Registry, *, actor: str) -> SyncReport:
    """Upsert every definition of ``registry``; idempotent.

    ``updated_at`` moves only when a definition's content changed. A stored definition
    that is no longer in the files is deleted when it has no instances and reported in
    ``orphaned`` otherwise.
    """
    report = SyncReport()
    with translate_errors("sync definitions"):
        for definition in registry:
            values = {
                "id": definition.id,
                "name": definition.name,
                "description": definition.description,
                "version": definition.version,
                "definition": definition.raw,
            }
            stmt = pg_insert(definitions).values(**values)
            excluded = stmt.excluded
            changed = sa.tuple_(
                definitions.c.name,
                definitions.c.description,
                definitions.c.version,
                definitions.c.definition,
            ).is_distinct_from(
                sa.tuple_(
                    excluded.name, excluded.description, excluded.version, excluded.definition
                )
            )
            upsert = stmt.on_conflict_do_update(
                index_elements=[definitions.c.id],
                set_={
                    "name": excluded.name,
                    "description": excluded.description,
                    "version": excluded.version,
                    "definition": excluded.definition,
                    "updated_at": sa.func.now(),
                },
                where=changed,
            )
            inserted = sa.literal_column("xmax = 0", sa.Boolean).label("inserted")
            row = session.execute(upsert.returning(inserted)).first()
            if row is None:
                report.unchanged.append(definition.id)
                continue
            action = "definition.create" if row.inserted else "definition.update"
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
            sa.select(definitions.c.id, sa.func.count(instances.c.id).label("n"))
            .select_from(definitions.outerjoin(instances))
            .group_by(definitions.c.id)
        )
        for row in session.execute(counts):
            if row.id in known:
                continue
            if row.n:
                report.orphaned[row.id] = int(row.n)
                continue
            session.execute(sa.delete(definitions).where(definitions.c.id == row.id))
            report.removed.append(row.id)
            audit.record(session, action="definition.delete", actor=actor, integration_id=row.id)
    return report


def list_definitions(session: Session) -> list[StoredDefinition]:
    """Every stored definition with how many instances use it, by id."""
    query = (
        sa.select(definitions, sa.func.count(instances.c.id).label("n"))
        .select_from(definitions.outerjoin(instances))
        .group_by(definitions.c.id)
        .order_by(definitions.c.id)
    )
    with translate_errors("list definitions"):
        rows = session.execute(query).all()
    return [
        StoredDefinition(
            id=r.id,
            name=r.name,
            version=r.version,
            description=r.description,
            updated_at=r.updated_at,
            instance_count=int(r.n),
            definition=r.definition,
        )
        for r in rows
    ]
