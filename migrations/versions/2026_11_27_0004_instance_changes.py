"""Announce changes of instances that can change a resolution (LISTEN/NOTIFY).

A statement-level trigger sends an empty notification on the channel
``integration_instance_changes`` after every insert, delete or truncate of instances; a
row-level trigger sends it after an update that changes what resolution reads (the
state in ``status``, the scope or the ids). Writes that keep those (health checks and
OAuth refreshes rewriting ``status`` with the same state) do not notify. PostgreSQL
delivers it at commit and drops identical notifications of one transaction, so
processes that remember resolutions forget them once per transaction.

Revision ID: 2026_11_27_0004
Revises: 2026_11_27_0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "2026_11_27_0004"
down_revision: str | None = "2026_11_27_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Also in prefect_integrations.resolution_cache.INSTANCE_CHANGES_CHANNEL.
CHANNEL = "integration_instance_changes"

# What `prefect_integrations.resolve` reads of a row (of status only the state).
RESOLUTION_CHANGED = """
  OLD.status->>'state' IS DISTINCT FROM NEW.status->>'state'
  OR OLD.context_type IS DISTINCT FROM NEW.context_type
  OR OLD.context_id IS DISTINCT FROM NEW.context_id
  OR OLD.integration_id IS DISTINCT FROM NEW.integration_id
  OR OLD.instance_id IS DISTINCT FROM NEW.instance_id
"""

# pg_notify needs no privilege, so the function runs as the writer (no SECURITY DEFINER).
FUNCTIONS = f"""
CREATE FUNCTION integration_instances_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{CHANNEL}', '');
  RETURN NULL;
END
$$;

CREATE TRIGGER integration_instances_notify_write
  AFTER INSERT OR DELETE OR TRUNCATE ON integration_instances
  FOR EACH STATEMENT EXECUTE FUNCTION integration_instances_notify();
CREATE TRIGGER integration_instances_notify_update
  AFTER UPDATE ON integration_instances
  FOR EACH ROW WHEN ({RESOLUTION_CHANGED})
  EXECUTE FUNCTION integration_instances_notify();
"""


def upgrade() -> None:
    op.execute(FUNCTIONS)


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER IF EXISTS integration_instances_notify_update ON integration_instances"
    )
    op.execute("DROP TRIGGER IF EXISTS integration_instances_notify_write ON integration_instances")
    op.execute("DROP FUNCTION IF EXISTS integration_instances_notify()")
