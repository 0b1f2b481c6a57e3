"""The specification's tables: UUID keys, a column per definition field, the five named indexes.

``integration_definitions`` gets a UUID primary key ``id``; the integration id moves to
``integration_id`` (UNIQUE, ``integration_definitions_integration_id_idx``), and the
stored document is split into the columns ``methods``, ``config_schema``, ``auth_type``
and ``oauth2_config``, with the package's extension fields (``baseUrl``, ``auth``,
``healthCheck``, ...) in ``extensions``. ``integration_instances`` refers to its
definition by ``integration_definition_id`` (UUID, ``integration_instances_definition_idx``)
instead of the integration id, gains ``description``, and its indexes take the names of
the specification (``integration_instances_instance_id_idx``,
``integration_instances_context_idx``, ``integration_instances_status_idx``).

Rows are converted in place; ciphertexts are not touched, so no key is needed. The
resolution-change trigger of revision 0004 is recreated on the new reference column.
Downgrading restores the previous layout with its data (an instance's ``description`` is
dropped: the previous layout has no place for it).

Revision ID: 2026_11_29_0005
Revises: 2026_11_27_0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "2026_11_29_0005"
down_revision: str | None = "2026_11_27_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "integration_instance_changes"

# The definition fields that have a column of their own; the rest are extensions.
_SPEC_FIELDS = (
    "id",
    "integrationId",
    "name",
    "description",
    "version",
    "methods",
    "configSchema",
    "authType",
    "oauth2Config",
)


def _notify_trigger(reference: str) -> str:
    """The row-level trigger of revision 0004, watching ``reference`` for the definition."""
    return f"""
CREATE TRIGGER integration_instances_notify_update
  AFTER UPDATE ON integration_instances
  FOR EACH ROW WHEN (
    OLD.status->>'state' IS DISTINCT FROM NEW.status->>'state'
    OR OLD.context_type IS DISTINCT FROM NEW.context_type
    OR OLD.context_id IS DISTINCT FROM NEW.context_id
    OR OLD.{reference} IS DISTINCT FROM NEW.{reference}
    OR OLD.instance_id IS DISTINCT FROM NEW.instance_id)
  EXECUTE FUNCTION integration_instances_notify();
"""


def upgrade() -> None:
    op.execute(
        "DROP TRIGGER IF EXISTS integration_instances_notify_update ON integration_instances"
    )
    op.drop_constraint(
        "fk_integration_instances_definition", "integration_instances", type_="foreignkey"
    )

    # integration_definitions: UUID key, integration_id, one column per field.
    op.alter_column("integration_definitions", "id", new_column_name="integration_id")
    op.drop_constraint("integration_definitions_pkey", "integration_definitions", type_="primary")
    op.add_column(
        "integration_definitions",
        sa.Column(
            "id", UUID(as_uuid=True), nullable=False, server_default=sa.text("gen_random_uuid()")
        ),
    )
    op.create_primary_key("integration_definitions_pkey", "integration_definitions", ["id"])
    op.create_unique_constraint(
        "integration_definitions_integration_id_idx",
        "integration_definitions",
        ["integration_id"],
    )
    for name, type_ in (
        ("methods", JSONB),
        ("config_schema", JSONB),
        ("auth_type", sa.String(50)),
        ("oauth2_config", JSONB),
        ("extensions", JSONB),
    ):
        op.add_column("integration_definitions", sa.Column(name, type_))
    removed = " - ".join(f"'{field}'" for field in _SPEC_FIELDS)
    op.execute(
        f"""
        UPDATE integration_definitions SET
          methods = definition->'methods',
          config_schema = definition->'configSchema',
          auth_type = definition->>'authType',
          oauth2_config = definition->'oauth2Config',
          extensions = definition - {removed}
        """
    )
    for name in ("methods", "config_schema", "auth_type"):
        op.alter_column("integration_definitions", name, nullable=False)
    op.alter_column(
        "integration_definitions",
        "extensions",
        nullable=False,
        server_default=sa.text("'{}'::jsonb"),
    )
    op.drop_column("integration_definitions", "definition")

    # integration_instances: reference the definition by its UUID.
    op.add_column(
        "integration_instances", sa.Column("integration_definition_id", UUID(as_uuid=True))
    )
    op.execute(
        """
        UPDATE integration_instances i SET integration_definition_id = d.id
          FROM integration_definitions d
         WHERE d.integration_id = i.integration_id
        """
    )
    op.alter_column("integration_instances", "integration_definition_id", nullable=False)
    op.create_foreign_key(
        "fk_integration_instances_definition",
        "integration_instances",
        "integration_definitions",
        ["integration_definition_id"],
        ["id"],
    )
    op.drop_index("idx_integration_instances_integration_id", "integration_instances")
    op.drop_column("integration_instances", "integration_id")
    op.create_index(
        "integration_instances_definition_idx",
        "integration_instances",
        ["integration_definition_id"],
    )
    op.add_column("integration_instances", sa.Column("description", sa.Text))
    op.alter_column(
        "integration_instances",
        "context_type",
        type_=sa.String(50),
        existing_type=sa.String(20),
        existing_nullable=False,
    )
    # The specification's index names. Renaming the UNIQUE constraint renames its index and
    # keeps the foreign key of integration_oauth_states that depends on it.
    op.execute(
        "ALTER TABLE integration_instances RENAME CONSTRAINT "
        "uq_integration_instances_instance_id TO integration_instances_instance_id_idx"
    )
    op.execute(
        "ALTER INDEX idx_integration_instances_context RENAME TO integration_instances_context_idx"
    )
    op.execute(
        "ALTER INDEX idx_integration_instances_status RENAME TO integration_instances_status_idx"
    )
    op.execute(_notify_trigger("integration_definition_id"))


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER IF EXISTS integration_instances_notify_update ON integration_instances"
    )
    op.execute(
        "ALTER INDEX integration_instances_status_idx RENAME TO idx_integration_instances_status"
    )
    op.execute(
        "ALTER INDEX integration_instances_context_idx RENAME TO idx_integration_instances_context"
    )
    op.execute(
        "ALTER TABLE integration_instances RENAME CONSTRAINT "
        "integration_instances_instance_id_idx TO uq_integration_instances_instance_id"
    )
    op.alter_column(
        "integration_instances",
        "context_type",
        type_=sa.String(20),
        existing_type=sa.String(50),
        existing_nullable=False,
    )
    op.drop_column("integration_instances", "description")

    op.add_column("integration_instances", sa.Column("integration_id", sa.String(255)))
    op.execute(
        """
        UPDATE integration_instances i SET integration_id = d.integration_id
          FROM integration_definitions d
         WHERE d.id = i.integration_definition_id
        """
    )
    op.alter_column("integration_instances", "integration_id", nullable=False)
    op.drop_constraint(
        "fk_integration_instances_definition", "integration_instances", type_="foreignkey"
    )
    op.drop_index("integration_instances_definition_idx", "integration_instances")
    op.drop_column("integration_instances", "integration_definition_id")
    op.create_index(
        "idx_integration_instances_integration_id", "integration_instances", ["integration_id"]
    )

    op.add_column("integration_definitions", sa.Column("definition", JSONB))
    op.execute(
        """
        UPDATE integration_definitions SET definition =
          extensions || jsonb_build_object(
            'id', integration_id, 'name', name, 'description', description,
            'version', version, 'methods', methods, 'configSchema', config_schema,
            'authType', auth_type)
          || CASE WHEN oauth2_config IS NULL THEN '{}'::jsonb
                  ELSE jsonb_build_object('oauth2Config', oauth2_config) END
        """
    )
    op.alter_column("integration_definitions", "definition", nullable=False)
    for name in ("extensions", "oauth2_config", "auth_type", "config_schema", "methods"):
        op.drop_column("integration_definitions", name)
    op.drop_constraint(
        "integration_definitions_integration_id_idx", "integration_definitions", type_="unique"
    )
    op.drop_constraint("integration_definitions_pkey", "integration_definitions", type_="primary")
    op.drop_column("integration_definitions", "id")
    op.alter_column("integration_definitions", "integration_id", new_column_name="id")
    op.create_primary_key("integration_definitions_pkey", "integration_definitions", ["id"])
    op.create_foreign_key(
        "fk_integration_instances_definition",
        "integration_instances",
        "integration_definitions",
        ["integration_id"],
        ["id"],
    )
    op.execute(_notify_trigger("integration_id"))
