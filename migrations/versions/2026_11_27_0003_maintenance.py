"""Maintenance columns: when an instance was last checked, and the claim of a maintenance run.

Revision ID: 2026_11_27_0003
Revises: 2026_11_27_0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_11_27_0003"
down_revision: str | None = "2026_11_27_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("integration_instances", sa.Column("last_checked_at", sa.DateTime(timezone=True)))
    op.add_column(
        "integration_instances", sa.Column("maintenance_lease_until", sa.DateTime(timezone=True))
    )
    op.add_column("integration_instances", sa.Column("maintenance_lease_owner", sa.Text))
    # the health sweep claims the least recently checked instances first
    op.create_index(
        "idx_integration_instances_last_checked_at", "integration_instances", ["last_checked_at"]
    )


def downgrade() -> None:
    op.drop_index("idx_integration_instances_last_checked_at", "integration_instances")
    op.drop_column("integration_instances", "maintenance_lease_owner")
    op.drop_column("integration_instances", "maintenance_lease_until")
    op.drop_column("integration_instances", "last_checked_at")
