"""Databases and login roles of a cluster: the package's database, role passwords.

Run on a maintenance database of the cluster (``postgres``) as a role that may create
databases and roles, outside a transaction (CREATE and DROP DATABASE refuse to run in
one). Takes a libpq connection string, not a `~prefect_integrations.db.Database`: the
database these create does not exist yet.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

import psycopg
from psycopg import sql

__all__ = ["config_loaded_at", "drop_database", "ensure_database", "ensure_login_roles"]


def ensure_database(conninfo: str, database: str) -> bool:
    """Create ``database`` unless it exists; True when it was created.

    ``conninfo`` connects to another database of the cluster (say ``postgres``).
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        return True


def drop_database(conninfo: str, database: str) -> None:
    """Drop ``database`` if it exists, ending its sessions (``WITH (FORCE)``).

    ``conninfo`` connects to another database of the cluster (say ``postgres``).
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )


def ensure_login_roles(
    conninfo: str, passwords: Mapping[str, str], *, reset: Collection[str] = ()
) -> list[str]:
    """Give each role of ``passwords`` its password; return the roles created or changed.

    A missing role is created with LOGIN; an existing one gets the password when it has
    none or is named in ``reset``. Only a SCRAM-SHA-256 verifier, computed here by libpq,
    reaches the server: the password itself is never in a statement (nor in the server
    log, nor in an error). ``conninfo`` connects as a superuser (it reads ``pg_authid``).
    """
    changed: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT rolname, rolpassword IS NOT NULL FROM pg_authid "
            "WHERE rolname = ANY(%s::text[])",
            (list(passwords),),
        ).fetchall()
        has_password = {str(name): bool(flag) for name, flag in rows}
        for role, password in passwords.items():
            if role in has_password and has_password[role] and role not in reset:
                continue
            verifier = conn.pgconn.encrypt_password(
                password.encode(), role.encode(), b"scram-sha-256"
            ).decode("ascii")
            template = (
                "ALTER ROLE {} PASSWORD {}"
                if role in has_password
                else "CREATE ROLE {} LOGIN PASSWORD {}"
            )
            conn.execute(sql.SQL(template).format(sql.Identifier(role), sql.Literal(verifier)))
            changed.append(role)
    return changed


def config_loaded_at(conninfo: str) -> datetime:
    """When the server last loaded its configuration files (``pg_conf_load_time()``)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT pg_conf_load_time()").fetchone()
    assert row is not None
    loaded: datetime = row[0]
    return loaded
