"""Database roles and their privileges: the admin and runtime roles of the package.

`apply_grants` creates the roles when missing and grants each what it may do; nobody may
change or delete audit rows (both may append and seal them).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from prefect_integrations.db import VERSION_TABLE, Database
from prefect_integrations.exceptions import PermissionDenied
from prefect_integrations.models import (
    ADMIN_ROLE,
    AUDIT_ID_SEQUENCE,
    RUNTIME_ROLE,
    RUNTIME_UPDATABLE_COLUMNS,
    audit_log,
    definitions,
    instances,
    keys,
    metadata,
)
from prefect_integrations.store.audit_chain import APPENDED_COLUMNS, SEAL_FUNCTION

__all__ = ["apply_grants", "missing_privileges"]


def _role_exists(connection: Connection, role: str) -> bool:
    return bool(
        connection.execute(
            sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
        ).scalar()
    )


#: The package's tables (definitions, instances, audit log, OAuth states, key registry).
_OWNED_TABLES = tuple(metadata.tables)


def _require_table_owner(connection: Connection) -> None:
    """Refuse to grant unless the connected role owns the tables (or is a superuser).

    PostgreSQL only warns when a role without the grant option runs GRANT or REVOKE, so
    without this check `apply_grants` would report success having changed nothing.
    """
    rows = connection.execute(
        sa.text(
            "SELECT c.relname, pg_has_role(current_user, c.relowner, 'MEMBER') AS owns, "
            "current_user AS me FROM pg_class c "
            "WHERE c.relname = ANY(CAST(:names AS text[])) "
            "AND c.relnamespace = to_regnamespace(current_schema())"
        ),
        {"names": list(_OWNED_TABLES)},
    ).all()
    foreign = sorted(r.relname for r in rows if not r.owns)
    if foreign:
        raise PermissionDenied(
            f"Database role is not allowed to grant database privileges: role "
            f"'{rows[0].me}' does not own {', '.join(foreign)}; run it as the owner of the "
            "tables (the role that ran `db upgrade`)"
        )


def apply_grants(
    db: Database,
    *,
    admin_role: str = ADMIN_ROLE,
    runtime_role: str = RUNTIME_ROLE,
    login: bool = True,
) -> None:
    """Create the admin and runtime roles if missing and grant them their privileges.

    admin: manages definitions and instances (SELECT/INSERT/UPDATE/DELETE), appends audit.
    runtime: reads definitions and instances, updates only status, credentials, token and
    usage columns, appends audit; cannot create or delete instances. Both read the key
    registry and may register a key; only admin may change a registration.
    Nobody may change or delete audit rows: both roles may INSERT a row's content only,
    and seal the log through its sealer function (they may not UPDATE it).
    """
    quote = db.engine.dialect.identifier_preparer.quote
    admin, runtime = quote(admin_role), quote(runtime_role)
    updatable = ", ".join(RUNTIME_UPDATABLE_COLUMNS)
    with db.connect("grant database privileges") as connection:
        database = quote(connection.execute(sa.text("SELECT current_database()")).scalar_one())
        _require_table_owner(connection)
        for role in (admin_role, runtime_role):
            if not _role_exists(connection, role):
                option = "LOGIN" if login else "NOLOGIN"
                connection.execute(sa.text(f"CREATE ROLE {quote(role)} {option}"))
        statements = [
            f"REVOKE ALL ON {', '.join(_OWNED_TABLES)} FROM PUBLIC",
            f"GRANT CONNECT ON DATABASE {database} TO {admin}, {runtime}",
            f"GRANT USAGE ON SCHEMA public TO {admin}, {runtime}",
            f"GRANT SELECT ON {VERSION_TABLE} TO {admin}, {runtime}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON integration_definitions, "
            f"integration_instances TO {admin}",
            f"GRANT SELECT ON integration_definitions, integration_instances TO {runtime}",
            f"GRANT UPDATE ({updatable}) ON integration_instances TO {runtime}",
            # the audit log: rows are appended with their content only (the defaults number
            # and stamp them) and sealed by the sealer function, which runs as the owner
            f"REVOKE INSERT, UPDATE ON {audit_log.name} FROM {admin}, {runtime}",
            f"GRANT SELECT ON {audit_log.name} TO {admin}, {runtime}",
            f"GRANT INSERT ({', '.join(APPENDED_COLUMNS)}) ON {audit_log.name} "
            f"TO {admin}, {runtime}",
            f"REVOKE ALL ON FUNCTION {SEAL_FUNCTION} FROM PUBLIC",
            f"GRANT EXECUTE ON FUNCTION {SEAL_FUNCTION} TO {admin}, {runtime}",
            # the id default runs as the writer and numbers rows from this sequence
            f"GRANT USAGE ON SEQUENCE {AUDIT_ID_SEQUENCE} TO {admin}, {runtime}",
            f"GRANT SELECT, INSERT, DELETE ON integration_oauth_states TO {admin}, {runtime}",
            # the key registry: workers read it and register keys on first use; only an
            # operator (admin) may change a registration
            f"GRANT SELECT, INSERT, UPDATE ON {keys.name} TO {admin}",
            f"GRANT SELECT, INSERT ON {keys.name} TO {runtime}",
        ]
        for statement in statements:
            connection.execute(sa.text(statement))


#: What every maintenance run does: (privilege, table).
_MAINTENANCE_NEEDS = (
    ("SELECT", definitions.name),
    ("SELECT", instances.name),
    ("UPDATE", instances.name),
    ("INSERT", audit_log.name),
    ("EXECUTE", SEAL_FUNCTION),
    ("SELECT", keys.name),
)


def missing_privileges(connection: Session | Connection) -> list[str]:
    """The privileges a maintenance run needs that the connected role lacks.

    Each as ``'UPDATE on integration_instances'``; INSERT and UPDATE count when granted
    on any column (the runtime role has it on the status, credentials and lease columns, and on
    the audit log's chain columns, to seal it).
    """
    missing = []
    for privilege, table in _MAINTENANCE_NEEDS:
        by_column = privilege in ("INSERT", "UPDATE")
        check = "has_any_column_privilege" if by_column else "has_table_privilege"
        if privilege == "EXECUTE":
            check = "has_function_privilege"
        allowed = connection.execute(
            sa.text(f"SELECT {check}(CAST(:t AS text), CAST(:p AS text))"),
            {"t": table, "p": privilege},
        ).scalar()
        if not allowed:
            missing.append(f"{privilege} on {table}")
    return missing
