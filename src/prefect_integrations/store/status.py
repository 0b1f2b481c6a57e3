"""The one writer of an instance's ``status``.

Every status write in the package goes through `write_status` (one instance) or
`write_statuses` (a health-check batch). Both:

- validate the document against the status schema (`validate_status`);
- are conditional on what the caller read: the row is written only while
  ``status->>'state'`` is still ``expected_state`` (and, for a batch, while this run
  still holds the maintenance lease). A state changed meanwhile (an operator setting
  ``inactive`` during a token refresh or a health check) is never overwritten: the
  write returns False / leaves the row out;
- emit the state-change Prefect event once the transaction commits, when the state
  really changed: ``integration.instance.degraded`` on entering ``error``,
  ``integration.instance.recovered`` on leaving ``error`` for ``active``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from prefect_integrations.db import translate_errors
from prefect_integrations.events import emit_instance_event
from prefect_integrations.models import definitions, instances, integration_id_of
from prefect_integrations.store.instance_checks import validate_status
from prefect_integrations.store.instance_model import Instance, instance_from_row
from prefect_integrations.store.oauth_states import discard_states

__all__ = ["StatusWrite", "state_change_event", "write_status", "write_statuses"]

_PENDING = "prefect_integrations.status_events"
_LISTENING = "prefect_integrations.status_events_listening"

_WRITE_BATCH = sa.text(
    f"""
    UPDATE integration_instances AS i
       SET status = v.status
      FROM (SELECT unnest(CAST(:ids AS text[])) AS instance_id,
                   unnest(CAST(:statuses AS jsonb[])) AS status,
                   unnest(CAST(:expected AS text[])) AS expected,
                   unnest(CAST(:reasons AS text[])) AS reason) AS v
     WHERE i.instance_id = v.instance_id
       AND i.maintenance_lease_owner = :owner
       AND i.status->>'state' = v.expected
    RETURNING i.*, {integration_id_of("i")}, v.expected AS previous_state,
              v.reason AS change_reason
    """
)


@dataclass(frozen=True, slots=True)
class StatusWrite:
    """One row of `write_statuses`: the new status, and the state it was decided from."""

    instance_id: str
    status: Mapping[str, Any]
    expected_state: str
    reason: str


def state_change_event(before: str, after: str) -> str | None:
    """The Prefect event a state change emits, or None when it emits none."""
    if after == "error" and before != "error":
        return "integration.instance.degraded"
    if after == "active" and before == "error":
        return "integration.instance.recovered"
    return None


def write_status(
    session: Session,
    instance_id: str,
    status: Mapping[str, Any],
    *,
    expected_state: str,
    reason: str,
    touch: bool = False,
) -> bool:
    """Write ``status`` if the instance's state is still ``expected_state``; True if written.

    The document is validated first (`ValidationError` when it does not match the status
    schema). ``reason`` goes with the state-change event, emitted after commit.
    ``touch`` also sets ``updated_at`` (an operator's change). Writing ``inactive`` ends
    any refresh lease: a refresh still in flight can store its token (compare-and-swap
    on the credentials version) but no longer holds the instance, and every connect flow
    under way or link not yet opened is spent.
    """
    document = validate_status(instance_id, status)
    values: dict[str, Any] = {"status": document}
    if touch:
        values["updated_at"] = sa.func.now()
    if document["state"] == "inactive":
        values["refresh_lease_until"] = None  # deactivation ends any refresh in progress
    integration_id = (
        sa.select(definitions.c.integration_id)
        .where(definitions.c.id == instances.c.integration_definition_id)
        .scalar_subquery()
        .label("integration_id")
    )
    query = (
        sa.update(instances)
        .where(instances.c.instance_id == instance_id)
        .where(instances.c.status["state"].astext == expected_state)
        .values(**values)
        .returning(*instances.c, integration_id)
    )
    with translate_errors(f"write the status of instance '{instance_id}'"):
        row = session.execute(query).first()
    if row is None:
        return False
    if document["state"] == "inactive" and expected_state != "inactive":
        discard_states(session, instance_id)  # no connect flow completes after this
    _emit_on_commit(session, expected_state, instance_from_row(row), reason)
    return True


def write_statuses(
    session: Session, writes: Sequence[StatusWrite], *, lease_owner: str
) -> set[str]:
    """Write a batch of statuses held under the maintenance lease of ``lease_owner``.

    A row is written only while the run still holds its lease and its state is still the
    one the status was decided from. Returns the ids written. Every document is validated
    first; events are emitted after commit, as with `write_status`.
    """
    if not writes:
        return set()
    documents = [validate_status(w.instance_id, w.status) for w in writes]
    with translate_errors("record instance statuses"):
        rows = session.execute(
            _WRITE_BATCH,
            {
                "ids": [w.instance_id for w in writes],
                "statuses": [json.dumps(d) for d in documents],
                "expected": [w.expected_state for w in writes],
                "reasons": [w.reason for w in writes],
                "owner": lease_owner,
            },
        ).all()
    for row in rows:
        _emit_on_commit(session, row.previous_state, instance_from_row(row), row.change_reason)
    return {row.instance_id for row in rows}


def _emit_on_commit(session: Session, before: str, instance: Instance, reason: str) -> None:
    """Queue the state-change event of ``instance`` until the transaction commits."""
    name = state_change_event(before, instance.state)
    if name is None:
        return
    session.info.setdefault(_PENDING, []).append((name, instance, reason))
    if not session.info.get(_LISTENING):
        session.info[_LISTENING] = True
        event.listen(session, "after_commit", _emit_pending)
        event.listen(session, "after_rollback", _drop_pending)


def _emit_pending(session: Session) -> None:
    for name, instance, reason in session.info.pop(_PENDING, []):
        emit_instance_event(name, instance, reason=reason)


def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)
