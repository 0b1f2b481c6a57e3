"""The audit log in independent chains, so audited transactions append in parallel.

Before, the append trigger took one advisory lock until commit: every audited transaction
waited for the previous one. Now a transaction takes one of `CHAINS` advisory locks, the
first free one, until commit and appends to that chain (see
`prefect_integrations.store.audit_chain`). Rows gain ``chain``, ``seq`` and ``version``;
ids come from ``integration_audit_log_id_seq``. The rows already written stay valid
unchanged: they become chain 0's history (version 1, their hash formula), and chain 0
continues from the last of them. A unique index on ``(chain, seq)`` holds one row per
place, finds a chain's last row for the trigger and lets `audit verify` read chain by
chain.

Downgrading returns to one chain: every row is renumbered and re-linked in id order with
the version 1 formula (the previous layout cannot hold several chains), so run `audit
verify` first; a downgraded log verifies under the previous code.

Revision ID: 2026_11_30_0007
Revises: 2026_11_30_0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from prefect_integrations.store.audit_chain import CHAINS, chained_functions_sql

revision: str = "2026_11_30_0007"
down_revision: str | None = "2026_11_30_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The functions of revision 0001, restored by the downgrade.
_V1_FUNCTIONS = """
CREATE OR REPLACE FUNCTION integration_audit_hash(prev bytea, r integration_audit_log)
RETURNS bytea LANGUAGE sql STABLE AS $$
  SELECT digest(
    coalesce(prev, ''::bytea) || convert_to(jsonb_build_array(
      r.id,
      to_char(r.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
      r.actor, r.db_role, r.action, r.instance_id, r.integration_id, r.outcome, r.details
    )::text, 'UTF8'),
    'sha256')
$$;

CREATE OR REPLACE FUNCTION integration_audit_append() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  last_id bigint;
  last_hash bytea;
BEGIN
  PERFORM pg_advisory_xact_lock(1346978133);
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
"""

# Renumber and re-link every row in id order (version 1), for the single-chain layout.
_RELINK = """
DO $$
DECLARE
  r integration_audit_log;
  n bigint := 0;
  old bigint;
  p bytea;
BEGIN
  FOR r IN SELECT * FROM integration_audit_log ORDER BY id LOOP
    n := n + 1;
    old := r.id;
    r.id := n;
    r.prev_hash := p;
    r.hash := integration_audit_hash(p, r);
    UPDATE integration_audit_log SET id = r.id, prev_hash = r.prev_hash, hash = r.hash
     WHERE id = old AND (id, prev_hash, hash) IS DISTINCT FROM (r.id, r.prev_hash, r.hash);
    p := r.hash;
  END LOOP;
END
$$;
"""


def _schema() -> str:
    return str(op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one())


def upgrade() -> None:
    op.execute(
        "ALTER TABLE integration_audit_log ADD COLUMN version smallint, "
        "ADD COLUMN chain smallint, ADD COLUMN seq bigint"
    )
    # The rows so far: chain 0, in id order (version 1 hashes do not cover these columns).
    op.execute("ALTER TABLE integration_audit_log DISABLE TRIGGER integration_audit_refuse_change")
    op.execute(
        """
        UPDATE integration_audit_log l SET version = 1, chain = 0, seq = o.n
          FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM integration_audit_log) o
         WHERE o.id = l.id
        """
    )
    op.execute("ALTER TABLE integration_audit_log ENABLE TRIGGER integration_audit_refuse_change")
    for column in ("version", "chain", "seq"):
        op.alter_column("integration_audit_log", column, nullable=False)
    op.execute(
        f"ALTER TABLE integration_audit_log ADD CONSTRAINT ck_integration_audit_log_chain "
        f"CHECK (chain >= 0 AND chain < {CHAINS})"
    )
    op.execute("CREATE SEQUENCE integration_audit_log_id_seq OWNED BY integration_audit_log.id")
    op.execute(
        "SELECT setval('integration_audit_log_id_seq', "
        "coalesce((SELECT max(id) FROM integration_audit_log), 0) + 1, false)"
    )
    op.create_index(
        "integration_audit_log_chain_seq_idx",
        "integration_audit_log",
        ["chain", "seq"],
        unique=True,
    )
    op.execute(chained_functions_sql(_schema()))


def downgrade() -> None:
    op.execute(_V1_FUNCTIONS)
    op.execute("ALTER TABLE integration_audit_log DISABLE TRIGGER integration_audit_refuse_change")
    op.execute(_RELINK)
    op.execute("ALTER TABLE integration_audit_log ENABLE TRIGGER integration_audit_refuse_change")
    op.drop_index("integration_audit_log_chain_seq_idx", "integration_audit_log")
    op.execute("DROP SEQUENCE integration_audit_log_id_seq")
    for column in ("seq", "chain", "version"):
        op.drop_column("integration_audit_log", column)
