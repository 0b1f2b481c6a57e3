"""Audit rows may be archived: a deletion the chain records.

`prefect-integrations audit archive` appends a cut to each chain it archives (action
``audit.archive``, ``details.through_seq`` and the hash of the last row it removes) and
then deletes the chain's rows up to that seq. The guard function now lets a DELETE
through only for a row that a later cut of its own chain covers; every other UPDATE,
DELETE and TRUNCATE is refused as before. A partial index on the cuts makes the check
one index probe per row.

Downgrading restores the guard that refuses every DELETE and drops the index; archived
rows stay archived (`audit verify` of the previous version reports them missing).

Revision ID: 2026_11_30_0008
Revises: 2026_11_30_0007
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from prefect_integrations.store.audit_chain import CUT_ACTION, CUT_INDEX, chained_functions_sql

revision: str = "2026_11_30_0008"
down_revision: str | None = "2026_11_30_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The guard of revision 0007, restored by the downgrade.
_REFUSE_EVERYTHING = """
CREATE OR REPLACE FUNCTION integration_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  RAISE EXCEPTION 'integration_audit_log is append-only: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$fn$;
"""


def upgrade() -> None:
    schema = str(op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one())
    op.create_index(
        CUT_INDEX,
        "integration_audit_log",
        ["chain", "seq"],
        postgresql_where=sa.text(f"action = '{CUT_ACTION}'"),
    )
    op.execute(chained_functions_sql(schema))


def downgrade() -> None:
    op.execute(_REFUSE_EVERYTHING)
    op.drop_index(CUT_INDEX, "integration_audit_log")
