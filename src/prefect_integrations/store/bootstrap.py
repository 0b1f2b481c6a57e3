"""Databases of a cluster: create the package's database, drop a scratch one.

Run on a maintenance database of the cluster (``postgres``) as a role that may create
databases, outside a transaction (CREATE and DROP DATABASE refuse to run in one).
Takes a libpq connection string, not a `~prefect_integrations.db.Database`: the
database these create does not exist yet.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

__all__ = ["drop_database", "ensure_database"]


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
