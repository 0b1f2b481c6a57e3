"""Leases and batch claims on instances: who may work on an instance, and until when.

- The refresh lease (``refresh_lease_until``) lets one worker, of any number of threads
  and processes, make the token request of an instance: it is claimed with a
  compare-and-swap on ``credentials_version`` and released by writing a new version or
  by `release_refresh_lease`.
- The maintenance lease (``maintenance_lease_until`` / ``maintenance_lease_owner``) lets
  health-check runs split the due instances: `claim_maintenance_batch` claims a batch
  with ``FOR UPDATE SKIP LOCKED``, `release_maintenance_batch` stamps the check and
  releases it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from prefect_integrations.db import translate_errors
from prefect_integrations.exceptions import InstanceNotFound
from prefect_integrations.models import instances, integration_id_of
from prefect_integrations.store.instance_model import Instance, instance_from_row

__all__ = [
    "RefreshLease",
    "claim_maintenance_batch",
    "claim_refresh_lease",
    "database_now",
    "read_refresh_lease",
    "release_maintenance_batch",
    "release_refresh_lease",
]

_CLAIM_REFRESH = sa.text(
    """
    UPDATE integration_instances
       SET refresh_lease_until = now() + make_interval(secs => :lease)
     WHERE instance_id = :iid
       AND credentials_version = :version
       AND (refresh_lease_until IS NULL OR refresh_lease_until < now())
    RETURNING credentials_version
    """
)

_CLAIM_BATCH = sa.text(
    f"""
    UPDATE integration_instances AS i
       SET maintenance_lease_until = now() + make_interval(secs => :lease),
           maintenance_lease_owner = :owner
     WHERE i.id IN (
            SELECT id FROM integration_instances
             WHERE (maintenance_lease_until IS NULL OR maintenance_lease_until < now())
               AND (last_checked_at IS NULL
                    OR last_checked_at < LEAST(now() - make_interval(secs => :min_interval),
                                               CAST(:run_started AS timestamptz)))
               AND status->>'state' IN ('active', 'error')
               AND (CAST(:integrations AS text[]) IS NULL
                    OR integration_definition_id IN (
                         SELECT id FROM integration_definitions
                          WHERE integration_id = ANY(CAST(:integrations AS text[]))))
               AND (CAST(:ids AS text[]) IS NULL
                    OR instance_id = ANY(CAST(:ids AS text[])))
             ORDER BY last_checked_at NULLS FIRST, id
             LIMIT :batch
               FOR UPDATE SKIP LOCKED)
    RETURNING i.*, {integration_id_of("i")}
    """
)

_RELEASE_BATCH = sa.text(
    """
    UPDATE integration_instances
       SET last_checked_at = now(),
           maintenance_lease_until = NULL,
           maintenance_lease_owner = NULL
     WHERE maintenance_lease_owner = :owner
       AND instance_id = ANY(CAST(:ids AS text[]))
    RETURNING instance_id, status->>'state' AS state
    """
)


@dataclass(frozen=True, slots=True)
class RefreshLease:
    """What a worker waiting for another one's refresh reads."""

    credentials_version: int
    held: bool


def database_now(session: Session) -> datetime:
    """The database clock (the one leases are measured with)."""
    with translate_errors("read the database clock"):
        now: datetime = session.execute(sa.select(sa.func.now())).scalar_one()
    return now


def claim_refresh_lease(
    session: Session, instance_id: str, *, version: int, seconds: float
) -> bool:
    """Claim the refresh lease for ``seconds`` if the credentials are still at ``version``.

    False when the version changed or another worker holds an unexpired lease.
    """
    with translate_errors(f"claim the refresh lease of '{instance_id}'"):
        claimed = session.execute(
            _CLAIM_REFRESH, {"iid": instance_id, "version": version, "lease": seconds}
        ).first()
    return claimed is not None


def release_refresh_lease(session: Session, instance_id: str, *, version: int) -> None:
    """Release the refresh lease, unless a new version was written meanwhile."""
    with translate_errors(f"release the refresh lease of '{instance_id}'"):
        session.execute(
            sa.update(instances)
            .where(instances.c.instance_id == instance_id)
            .where(instances.c.credentials_version == version)
            .values(refresh_lease_until=None)
        )


def read_refresh_lease(session: Session, instance_id: str) -> RefreshLease:
    """The credentials version and whether a refresh lease is held; `InstanceNotFound`."""
    with translate_errors(f"read instance '{instance_id}'"):
        row = session.execute(
            sa.select(
                instances.c.credentials_version,
                instances.c.refresh_lease_until > sa.func.now(),
            ).where(instances.c.instance_id == instance_id)
        ).first()
    if row is None:
        raise InstanceNotFound(instance_id)
    return RefreshLease(credentials_version=int(row[0]), held=bool(row[1]))


def claim_maintenance_batch(
    session: Session,
    *,
    owner: str,
    lease_seconds: float,
    batch_size: int,
    run_started: datetime,
    min_interval: float,
    integrations: Sequence[str] | None = None,
    instance_ids: Sequence[str] | None = None,
) -> list[Instance]:
    """Claim the next batch of instances due for a check, sorted by instance id.

    Due: ``active`` or ``error``, not leased by another run, and not checked within
    ``min_interval`` seconds nor since ``run_started`` (so a run checks each once).
    Rows locked by another run are skipped.
    """
    with translate_errors("claim instances to check"):
        rows = session.execute(
            _CLAIM_BATCH,
            {
                "lease": lease_seconds,
                "owner": owner,
                "batch": batch_size,
                "run_started": run_started,
                "min_interval": min_interval,
                "integrations": list(integrations) if integrations else None,
                "ids": list(instance_ids) if instance_ids else None,
            },
        ).all()
    return sorted((instance_from_row(r) for r in rows), key=lambda i: i.instance_id)


def release_maintenance_batch(
    session: Session, *, owner: str, instance_ids: Sequence[str]
) -> dict[str, str]:
    """Stamp the check time and release the claims ``owner`` still holds.

    Returns the state each released instance is in now, by id.
    """
    with translate_errors("release checked instances"):
        rows = session.execute(_RELEASE_BATCH, {"owner": owner, "ids": list(instance_ids)})
        return {row.instance_id: row.state for row in rows}
