"""SQLAlchemy Core tables of the store (the migrations in ``migrations/`` create them)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

__all__ = [
    "ADMIN_ROLE",
    "RUNTIME_ROLE",
    "RUNTIME_UPDATABLE_COLUMNS",
    "SEAL_COLUMNS",
    "audit_log",
    "definitions",
    "instances",
    "integration_id_of",
    "keys",
    "metadata",
    "oauth_states",
]

metadata = sa.MetaData()

ADMIN_ROLE = "prefect_integrations_admin"
RUNTIME_ROLE = "prefect_integrations_runtime"
#: The audit log's chain columns: empty when a row is appended, filled by the sealer.
SEAL_COLUMNS = ("version", "chain", "seq", "prev_hash", "hash")
#: The sequence the audit append trigger numbers rows from.
AUDIT_ID_SEQUENCE = "integration_audit_log_id_seq"

definitions = sa.Table(
    "integration_definitions",
    metadata,
    sa.Column(
        "id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")
    ),
    sa.Column("integration_id", sa.String(255), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("version", sa.String(50), nullable=False),
    sa.Column("methods", JSONB, nullable=False),
    sa.Column("config_schema", JSONB, nullable=False),
    sa.Column("auth_type", sa.String(50), nullable=False),
    sa.Column("oauth2_config", JSONB),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    # Extra column: the package's extension fields of the definition (baseUrl, auth,
    # headers, errors, healthCheck, ...), so the stored row holds the whole document.
    sa.Column("extensions", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.UniqueConstraint("integration_id", name="integration_definitions_integration_id_idx"),
)

instances = sa.Table(
    "integration_instances",
    metadata,
    sa.Column(
        "id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")
    ),
    sa.Column("instance_id", sa.String(255), nullable=False),
    sa.Column(
        "integration_definition_id",
        UUID(as_uuid=True),
        sa.ForeignKey("integration_definitions.id", name="fk_integration_instances_definition"),
        nullable=False,
    ),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("context_type", sa.String(50), nullable=False),
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
    # Extra columns: key id of the credentials, OAuth token expiry, optimistic version
    # for compare-and-swap writes, refresh lease.
    sa.Column("key_id", sa.String(64)),
    sa.Column("token_expires_at", sa.DateTime(timezone=True)),
    sa.Column("credentials_version", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("refresh_lease_until", sa.DateTime(timezone=True)),
    # Maintenance: last health check, and the claim of the run working on the instance.
    sa.Column("last_checked_at", sa.DateTime(timezone=True)),
    sa.Column("maintenance_lease_until", sa.DateTime(timezone=True)),
    sa.Column("maintenance_lease_owner", sa.Text),
    sa.UniqueConstraint("instance_id", name="integration_instances_instance_id_idx"),
)

audit_log = sa.Table(
    "integration_audit_log",
    metadata,
    # id, occurred_at and db_role are set by the append trigger; the sealer fills
    # version, chain, seq, prev_hash and hash later (`store/audit_seal.py`).
    sa.Column(
        "id", sa.BigInteger, primary_key=True, autoincrement=False, server_default=sa.FetchedValue()
    ),
    sa.Column(
        "occurred_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.FetchedValue()
    ),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("db_role", sa.Text, nullable=False, server_default=sa.FetchedValue()),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("instance_id", sa.String(255)),
    sa.Column("integration_id", sa.String(255)),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("details", JSONB, nullable=False),
    sa.Column("prev_hash", BYTEA),
    sa.Column("hash", BYTEA),
    # The hash formula, the chain and the place in it (`store/audit_chain.py`).
    sa.Column("version", sa.SmallInteger),
    sa.Column("chain", sa.SmallInteger),
    sa.Column("seq", sa.BigInteger),
    # 32: `prefect_integrations.store.audit_chain.CHAINS`
    sa.CheckConstraint("chain >= 0 AND chain < 32", name="ck_integration_audit_log_chain"),
    # What the sealer can hash: a row beyond it would stop sealing at it.
    sa.CheckConstraint(
        "octet_length(actor) <= 1024 AND octet_length(action) <= 255 "
        "AND octet_length(details::text) <= 1048576",
        name="ck_integration_audit_log_size",
    ),
)

oauth_states = sa.Table(
    "integration_oauth_states",
    metadata,
    sa.Column("state_hash", BYTEA, primary_key=True),
    sa.Column("instance_id", sa.String(255), nullable=False),
    sa.Column("redirect_uri", sa.Text, nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("verifier", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

keys = sa.Table(
    "integration_keys",
    metadata,
    # The key each key id stands for: HMAC-SHA256 of a fixed label under the key (never the
    # key); see `prefect_integrations.store.key_registry`.
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("fingerprint", BYTEA, nullable=False),
    sa.Column(
        "registered_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("registered_by", sa.Text),
    sa.CheckConstraint("octet_length(fingerprint) = 32", name="integration_keys_fingerprint"),
)


def integration_id_of(alias: str) -> str:
    """SQL for the integration id of the instance row ``alias``, named ``integration_id``.

    Instances refer to their definition by UUID (the specification's schema); raw SQL
    that hands rows to `~prefect_integrations.store.instances.instance_from_row` or
    writes audit rows selects this beside the row.
    """
    return (
        "(SELECT d.integration_id FROM integration_definitions d "
        f"WHERE d.id = {alias}.integration_definition_id) AS integration_id"
    )


#: Columns of integration_instances the runtime role may update.
RUNTIME_UPDATABLE_COLUMNS = (
    "status",
    "credentials",
    "key_id",
    "credentials_version",
    "token_expires_at",
    "refresh_lease_until",
    "last_used_at",
    "updated_at",
    "last_checked_at",
    "maintenance_lease_until",
    "maintenance_lease_owner",
)
