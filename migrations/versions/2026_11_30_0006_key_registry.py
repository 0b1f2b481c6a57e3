"""The key registry: the key each key id stands for, by fingerprint.

``integration_keys`` holds one row per key id the operator (or trust on first use)
registered: the id and ``HMAC-SHA256(key, label)``, never the key. A maintenance worker
whose keyring holds another key under a registered id, or a primary key nobody
registered, is refused before it writes anything (see
`prefect_integrations.store.key_registry`). The table starts empty: existing keys are
registered on first use, or by ``prefect-integrations keys register``.

Revision ID: 2026_11_30_0006
Revises: 2026_11_29_0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA

revision: str = "2026_11_30_0006"
down_revision: str | None = "2026_11_29_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "integration_keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        # HMAC-SHA256 of a fixed label under the key: tells keys apart, never the key
        sa.Column("fingerprint", BYTEA, nullable=False),
        sa.Column(
            "registered_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("registered_by", sa.Text),
        sa.CheckConstraint("octet_length(fingerprint) = 32", name="integration_keys_fingerprint"),
    )


def downgrade() -> None:
    op.drop_table("integration_keys")
