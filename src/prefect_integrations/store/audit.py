"""The append-only, hash-chained audit log: the one writer of its rows.

Each row's defaults number and stamp it; the sealer (`audit_seal`) later links the rows
into a hash chain (``sha256(prev_hash || row)``, see `audit_chain`). UPDATE, DELETE and
TRUNCATE are refused, except sealing and the DELETE of rows an archive's cut covers
(`audit_archive`). `verify` (from `audit_verify`) recomputes every hash in Python. Details never
hold secrets: callers pass names and counts, not values.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from prefect_integrations.db import translate_errors
from prefect_integrations.models import audit_log
from prefect_integrations.store.audit_chain import APPENDED_COLUMNS
from prefect_integrations.store.audit_verify import Problem, VerifyReport, verify

__all__ = [
    "AuditAction",
    "AuditEntry",
    "AuditRow",
    "Outcome",
    "Problem",
    "VerifyReport",
    "bind_action",
    "insert_rows",
    "record",
    "record_many",
    "record_one",
    "record_outside",
    "select_row",
    "tail",
    "verify",
]

Outcome = Literal["success", "failure", "denied"]


class AuditAction(enum.StrEnum):
    """Every action the audit log records; the value is what the ``action`` column holds."""

    #: A definition was added to, changed in or removed from the database.
    DEFINITION_CREATE = "definition.create"
    DEFINITION_UPDATE = "definition.update"
    DEFINITION_DELETE = "definition.delete"
    #: An instance was created, changed or deleted by an operator.
    INSTANCE_CREATE = "instance.create"
    INSTANCE_UPDATE = "instance.update"
    INSTANCE_DELETE = "instance.delete"
    #: Credentials were replaced, decrypted, rotated at the provider or reshaped.
    CREDENTIALS_SET = "credentials.set"
    CREDENTIALS_DECRYPT = "credentials.decrypt"
    CREDENTIALS_ROTATE = "credentials.rotate"
    CREDENTIALS_UPGRADE = "credentials.upgrade"
    #: Ciphertexts were re-encrypted under the current key.
    KEYS_ROTATE = "keys.rotate"
    #: A key id was registered with its key's fingerprint (by an operator or on first use).
    KEYS_REGISTER = "keys.register"
    #: The OAuth2 authorization flow was started, completed, or a token refreshed.
    OAUTH_AUTHORIZE = "oauth.authorize"
    OAUTH_CONNECT = "oauth.connect"
    OAUTH_REFRESH = "oauth.refresh"
    #: A health check ran against the provider.
    HEALTH_CHECK = "health.check"
    #: A definition method was called.
    METHOD_CALL = "method.call"
    #: A maintenance run stopped because its own settings are wrong (no status changed).
    MAINTENANCE_FAULT = "maintenance.fault"
    #: A chain's oldest rows were moved to an archive file and deleted (a cut).
    AUDIT_ARCHIVE = "audit.archive"


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One row to append, for `record_many`."""

    action: AuditAction
    actor: str
    outcome: Outcome = "success"
    instance_id: str | None = None
    integration_id: str | None = None
    details: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row."""

    id: int
    occurred_at: datetime
    actor: str
    db_role: str
    action: str
    instance_id: str | None
    integration_id: str | None
    outcome: str
    details: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "id": self.id,
            "occurred_at": self.occurred_at.isoformat(),
            "actor": self.actor,
            "db_role": self.db_role,
            "action": self.action,
            "instance_id": self.instance_id,
            "integration_id": self.integration_id,
            "outcome": self.outcome,
            "details": dict(self.details),
        }


def _values(row: AuditRow) -> dict[str, Any]:
    return {
        "action": AuditAction(row.action).value,
        "actor": row.actor,
        "outcome": row.outcome,
        "instance_id": row.instance_id,
        "integration_id": row.integration_id,
        "details": dict(row.details or {}),
    }


def record_many(session: Session | Connection, rows: Iterable[AuditRow]) -> int:
    """Append rows in the caller's transaction (they commit or roll back with it).

    The one writer of the audit log: every row names an `AuditAction`. Returns how many
    rows were appended.
    """
    values = [_values(row) for row in rows]
    if not values:
        return 0
    with translate_errors(f"write the audit log ({values[0]['action']})"):
        if len(values) == 1:
            session.execute(sa.insert(audit_log).values(**values[0]))
        else:
            session.execute(sa.insert(audit_log), values)
    return len(values)


def record_one(session: Session | Connection, row: AuditRow) -> int:
    """Append one row in the caller's transaction (see `record_many`); returns its id."""
    values = _values(row)
    with translate_errors(f"write the audit log ({values['action']})"):
        inserted = session.execute(sa.insert(audit_log).values(**values).returning(audit_log.c.id))
        return int(inserted.scalar_one())


def record(
    session: Session | Connection,
    *,
    action: AuditAction,
    actor: str,
    outcome: Outcome = "success",
    instance_id: str | None = None,
    integration_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append one row in the caller's transaction (see `record_many`)."""
    record_many(session, [AuditRow(action, actor, outcome, instance_id, integration_id, details)])


# --------------------------------------------------------------------------------------
# Audit rows appended inside a larger statement
# --------------------------------------------------------------------------------------

#: The bind parameter holding the action of the rows `insert_rows` appends.
_ACTION_PARAM = "audit_action"


def select_row(
    *,
    actor: str,
    outcome: str,
    details: str,
    instance_id: str = "NULL",
    integration_id: str = "NULL",
    rest: str = "",
) -> str:
    """One ``SELECT`` of audit rows for `insert_rows`, from SQL expressions.

    Each argument is a SQL expression of the caller's statement (bind parameters or
    columns, never a value spliced in); the action is the bound parameter that
    `bind_action` sets. ``rest`` follows the select list (``FROM ... WHERE ...``).
    """
    return (
        f"SELECT {actor}, CAST(:{_ACTION_PARAM} AS text), {instance_id}, {integration_id},\n"
        f"       {outcome}, {details}\n{rest}"
    )


def insert_rows(*selects: str) -> str:
    """``INSERT INTO`` the audit log the rows of the `select_row` selects (``UNION ALL``).

    For a data-modifying CTE of a statement that must append its audit rows itself (one
    round trip); the statement is then passed through `bind_action`. Rows are numbered,
    stamped and sealed as those of `record`.
    """
    if not selects:
        raise ValueError("insert_rows needs at least one select")
    columns = ", ".join(APPENDED_COLUMNS)  # in the order of `select_row`
    body = "\nUNION ALL\n".join(selects)
    return f"INSERT INTO {audit_log.name} ({columns})\n{body}"


def bind_action(statement: sa.TextClause, action: AuditAction) -> sa.TextClause:
    """``statement`` (holding `insert_rows`) with the action of its audit rows bound."""
    return statement.bindparams(
        sa.bindparam(_ACTION_PARAM, value=AuditAction(action).value, type_=sa.Text)
    )


def record_outside(
    session: Session,
    *,
    action: AuditAction,
    actor: str,
    outcome: Outcome,
    instance_id: str | None = None,
    integration_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Record a failure so that it survives the caller's rollback.

    Written in its own transaction on another connection (an append waits for nothing).
    """
    row = AuditRow(action, actor, outcome, instance_id, integration_id, details)
    bind = session.get_bind()
    engine: Engine = bind.engine
    with engine.begin() as connection:
        record_many(connection, [row])


def _entry(row: sa.Row[Any]) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        occurred_at=row.occurred_at,
        actor=row.actor,
        db_role=row.db_role,
        action=row.action,
        instance_id=row.instance_id,
        integration_id=row.integration_id,
        outcome=row.outcome,
        details=row.details if isinstance(row.details, dict) else json.loads(row.details),
    )


def tail(
    session: Session,
    *,
    limit: int = 20,
    instance_id: str | None = None,
    action: str | None = None,
) -> list[AuditEntry]:
    """The newest ``limit`` rows (optionally of one instance or action), oldest first."""
    query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if instance_id is not None:
        query = query.where(audit_log.c.instance_id == instance_id)
    if action is not None:
        query = query.where(audit_log.c.action == action)
    with translate_errors("read the audit log"):
        rows = session.execute(query).all()
    return [_entry(r) for r in reversed(rows)]
