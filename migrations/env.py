"""Alembic environment: runs on the connection handed over by prefect_integrations.db."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from prefect_integrations.models import metadata

VERSION_TABLE = "prefect_integrations_alembic_version"


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Run migrations through `prefect-integrations db upgrade`")
_run(connection)
