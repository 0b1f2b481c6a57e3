"""Appends are plain INSERTs and the sealer chains the rows: audited transactions in parallel.

The append trigger of revision 0007 chained each row as it was inserted: a chain lock, a
read of the chain's head and a SHA-256 per row, inside every audited transaction. Now
there is no append trigger: the columns' defaults number (``id``, from the sequence,
once the transaction has its id; see `prefect_integrations.store.audit_seal`) and stamp
(``occurred_at``, ``db_role``) each row, and the chain columns (``version``, ``chain``,
``seq``, ``prev_hash``, ``hash``) stay empty until the sealer fills them, in id order,
with the same formula, so rows chained before and after this revision verify alike.
Roles that could write the log may now INSERT a row's content only and call the sealer,
``integration_audit_seal``, which runs as the table's owner (`prefect-integrations db
grant` grants the same); the guard lets one UPDATE through, the one that fills the empty
chain columns and changes nothing else. The unique ``(chain, seq)`` index
becomes partial: a row enters it when it is sealed.

Downgrading seals every row first, then restores the chaining trigger of revision 0008,
the NOT NULL constraints and the columns as 0008 had them.

Revision ID: 2026_11_30_0009
Revises: 2026_11_30_0008
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from prefect_integrations.store.audit_chain import (
    APPENDED_COLUMNS,
    SEAL_FUNCTION,
    STAMP_DEFAULTS,
    chained_functions_sql,
    functions_sql,
)
from prefect_integrations.store.audit_seal import seal

revision: str = "2026_11_30_0009"
down_revision: str | None = "2026_11_30_0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NULLABLE = ("version", "chain", "seq", "hash")
_CHAIN_SEQ = "integration_audit_log_chain_seq_idx"
_SIZE = "ck_integration_audit_log_size"
_SIZE_RULE = (
    "octet_length(actor) <= 1024 AND octet_length(action) <= 255 "
    "AND octet_length(details::text) <= 1048576"
)
_APPEND_TRIGGER = (
    "CREATE TRIGGER integration_audit_append BEFORE INSERT ON integration_audit_log "
    "FOR EACH ROW EXECUTE FUNCTION integration_audit_append()"
)


def _schema() -> str:
    return str(op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one())


def upgrade() -> None:
    schema = _schema()
    quoted = '"' + schema.replace('"', '""') + '"'
    op.execute("DROP TRIGGER integration_audit_append ON integration_audit_log")
    op.execute("DROP FUNCTION integration_audit_append()")
    for column in _NULLABLE:
        op.alter_column("integration_audit_log", column, nullable=True)
    for column, default in STAMP_DEFAULTS.items():
        op.execute(
            f"ALTER TABLE integration_audit_log ALTER COLUMN {column} "
            f"SET DEFAULT {default.format(schema=quoted)}"
        )
    # rows not sealed yet stay out of the (chain, seq) index: no entry to write per append
    op.drop_index(_CHAIN_SEQ, "integration_audit_log")
    op.create_index(
        _CHAIN_SEQ,
        "integration_audit_log",
        ["chain", "seq"],
        unique=True,
        postgresql_where=sa.text("seq IS NOT NULL"),
    )
    op.execute(functions_sql(schema))
    # a row the hash cannot be computed over would stop the sealer at it for good (new
    # rows only: rows already in the log were hashed)
    op.execute(
        f"ALTER TABLE integration_audit_log ADD CONSTRAINT {_SIZE} CHECK ({_SIZE_RULE}) NOT VALID"
    )
    _narrow_grants()


def _narrow_grants() -> None:
    """Roles that could write the log may now append a row's content and seal, no more."""
    writers = (
        op.get_bind()
        .execute(
            sa.text(
                """
            SELECT DISTINCT CASE WHEN g.grantee = 0 THEN 'PUBLIC'
                                 ELSE CAST(CAST(g.grantee AS regrole) AS text) END
              FROM pg_class c, aclexplode(c.relacl) g
             WHERE c.oid = 'integration_audit_log'::regclass AND g.grantee <> c.relowner
               AND g.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
            """
            )
        )
        .scalars()
    )
    for role in writers:
        op.execute(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON integration_audit_log FROM {role}")
        if role != "PUBLIC":
            op.execute(
                f"GRANT INSERT ({', '.join(APPENDED_COLUMNS)}) ON integration_audit_log TO {role}"
            )
            op.execute(f"GRANT EXECUTE ON FUNCTION {SEAL_FUNCTION} TO {role}")


def downgrade() -> None:
    seal(op.get_bind())
    op.execute(f"DROP FUNCTION {SEAL_FUNCTION}")
    op.execute(f"ALTER TABLE integration_audit_log DROP CONSTRAINT {_SIZE}")
    for column in STAMP_DEFAULTS:
        op.execute(f"ALTER TABLE integration_audit_log ALTER COLUMN {column} DROP DEFAULT")
    for column in _NULLABLE:
        op.alter_column("integration_audit_log", column, nullable=False)
    op.drop_index(_CHAIN_SEQ, "integration_audit_log")
    op.create_index(_CHAIN_SEQ, "integration_audit_log", ["chain", "seq"], unique=True)
    op.execute(chained_functions_sql(_schema()))
    op.execute(_APPEND_TRIGGER)
