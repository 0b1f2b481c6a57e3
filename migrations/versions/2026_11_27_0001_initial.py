"""Initial schema: definitions, instances, append-only hash-chained audit log.

Revision ID: 2026_11_27_0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

revision: str = "2026_11_27_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The advisory lock key that serialises appends to the audit chain.
AUDIT_LOCK_KEY = 0x5049_4155  # "PIAU"

# pgp_sym_decrypt raises on a wrong key or corrupt data, which would abort the caller's
# transaction; this wrapper returns NULL instead so the failure can be reported and audited.
VAULT_FUNCTIONS = """
CREATE FUNCTION integration_try_decrypt(ciphertext bytea, key text)
RETURNS text LANGUAGE plpgsql STRICT AS $$
BEGIN
  RETURN pgp_sym_decrypt(ciphertext, key);
EXCEPTION WHEN OTHERS THEN
  RETURN NULL;
END
$$;
"""

AUDIT_FUNCTIONS = f"""
CREATE FUNCTION integration_audit_hash(prev bytea, r integration_audit_log)
RETURNS bytea LANGUAGE sql STABLE AS $$
  SELECT digest(
    coalesce(prev, ''::bytea) || convert_to(jsonb_build_array(
      r.id,
      to_char(r.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
      r.actor, r.db_role, r.action, r.instance_id, r.integration_id, r.outcome, r.details
    )::text, 'UTF8'),
    'sha256')
$$;

CREATE FUNCTION integration_audit_append() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  last_id bigint;
  last_hash bytea;
BEGIN
  PERFORM pg_advisory_xact_lock({AUDIT_LOCK_KEY});
  SELECT id, hash INTO last_id, last_hash
    FROM integration_audit_log ORDER BY id DESC LIMIT 1;
  NEW.id := coalesce(last_id, 0) + 1;
  NEW.occurred_at := clock_timestamp();
  NEW.db_role := current_user;
  NEW.prev_hash := last_hash;
  NEW.hash := integration_audit_hash(last_hash, NEW);
  RETURN NEW;
END
$$;

CREATE FUNCTION integration_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'integration_audit_log is append-only: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER integration_audit_append BEFORE INSERT ON integration_audit_log
  FOR EACH ROW EXECUTE FUNCTION integration_audit_append();
CREATE TRIGGER integration_audit_refuse_change BEFORE UPDATE OR DELETE ON integration_audit_log
  FOR EACH ROW EXECUTE FUNCTION integration_audit_refuse();
CREATE TRIGGER integration_audit_refuse_truncate BEFORE TRUNCATE ON integration_audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION integration_audit_refuse();
"""


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
    op.create_table(
        "integration_definitions",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("version", sa.String(50), nullable=False),
        sa.Column("definition", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    op.create_table(
        "integration_instances",
        sa.Column(
            "id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")
        ),
        sa.Column("instance_id", sa.String(255), nullable=False),
        sa.Column(
            "integration_id",
            sa.String(255),
            sa.ForeignKey("integration_definitions.id", name="fk_integration_instances_definition"),
            nullable=False,
        ),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("context_type", sa.String(20), nullable=False),
        sa.Column("context_id", sa.String(255)),
        sa.Column("config", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("credentials", JSONB),
        sa.Column(
            "status",
            JSONB,
            nullable=False,
            server_default=sa.text("""'{"state": "inactive"}'::jsonb"""),
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("key_id", sa.String(64)),
        sa.Column("token_expires_at", sa.DateTime(timezone=True)),
        sa.Column("credentials_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("refresh_lease_until", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("instance_id", name="uq_integration_instances_instance_id"),
        sa.CheckConstraint(
            "context_type IN ('global', 'client', 'user')",
            name="ck_integration_instances_context_type",
        ),
        sa.CheckConstraint(
            "(context_type = 'global') = (context_id IS NULL)",
            name="ck_integration_instances_context_id",
        ),
        sa.CheckConstraint(
            "status->>'state' IN ('active', 'inactive', 'error')",
            name="ck_integration_instances_status_state",
        ),
    )
    # The five indexes of the schema.
    op.create_index(
        "idx_integration_instances_integration_id", "integration_instances", ["integration_id"]
    )
    op.create_index(
        "idx_integration_instances_context", "integration_instances", ["context_type", "context_id"]
    )
    op.create_index(
        "idx_integration_instances_status",
        "integration_instances",
        ["status"],
        postgresql_using="gin",
    )
    op.create_index(
        "idx_integration_instances_last_used_at", "integration_instances", ["last_used_at"]
    )
    op.create_index("idx_integration_definitions_name", "integration_definitions", ["name"])
    # Indexes for the maintenance queries on the extra columns.
    op.create_index("idx_integration_instances_key_id", "integration_instances", ["key_id"])
    op.create_index(
        "idx_integration_instances_token_expires_at",
        "integration_instances",
        ["token_expires_at"],
        postgresql_where=sa.text("token_expires_at IS NOT NULL"),
    )

    op.create_table(
        "integration_audit_log",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("db_role", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("instance_id", sa.String(255)),
        sa.Column("integration_id", sa.String(255)),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("prev_hash", BYTEA),
        sa.Column("hash", BYTEA, nullable=False),
        sa.CheckConstraint(
            "outcome IN ('success', 'failure', 'denied')", name="ck_integration_audit_log_outcome"
        ),
    )
    op.create_index(
        "idx_integration_audit_log_instance", "integration_audit_log", ["instance_id", "id"]
    )
    op.execute(AUDIT_FUNCTIONS)
    op.execute(VAULT_FUNCTIONS)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS integration_audit_hash(bytea, integration_audit_log)")
    op.drop_table("integration_audit_log")
    op.execute("DROP FUNCTION IF EXISTS integration_audit_append()")
    op.execute("DROP FUNCTION IF EXISTS integration_audit_refuse()")
    op.execute("DROP FUNCTION IF EXISTS integration_try_decrypt(bytea, text)")
    op.drop_table("integration_instances")
    op.drop_table("integration_definitions")
    # pgcrypto stays: other schemas of the database may use it.
