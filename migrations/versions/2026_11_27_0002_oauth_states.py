"""OAuth2 authorization states: single-use, expiring, PKCE verifier encrypted.

Revision ID: 2026_11_27_0002
Revises: 2026_11_27_0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA

revision: str = "2026_11_27_0002"
down_revision: str | None = "2026_11_27_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "integration_oauth_states",
        # sha256 of the state value: the state itself is never stored
        sa.Column("state_hash", BYTEA, primary_key=True),
        sa.Column(
            "instance_id",
            sa.String(255),
            sa.ForeignKey("integration_instances.instance_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("verifier", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "idx_integration_oauth_states_expires_at", "integration_oauth_states", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_table("integration_oauth_states")
