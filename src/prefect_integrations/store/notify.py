"""Notifications of instance changes: PostgreSQL LISTEN/NOTIFY on one channel.

A trigger on ``integration_instances`` (migration 0004, recreated by 0005) notifies
`INSTANCE_CHANGES_CHANNEL` with an empty payload when a transaction that can change a
resolution commits. `listen` subscribes a listener's connection to it;
`notify_instance_change` sends a token on it (a non-empty payload), which reaches the
listeners after every change committed before it (notifications arrive in commit order).
"""

from __future__ import annotations

from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Connection

__all__ = ["INSTANCE_CHANGES_CHANNEL", "listen", "notify_instance_change"]

INSTANCE_CHANGES_CHANNEL = "integration_instance_changes"
"""The channel the ``integration_instances`` trigger notifies (migration 0004)."""

_NOTIFY = sa.text("SELECT pg_notify(:channel, :token)")


def notify_instance_change(connection: Connection, token: str) -> None:
    """Send ``token`` on `INSTANCE_CHANGES_CHANNEL` (delivered when ``connection`` commits)."""
    connection.execute(_NOTIFY, {"channel": INSTANCE_CHANGES_CHANNEL, "token": token})


def listen(conn: psycopg.Connection[Any]) -> None:
    """Subscribe ``conn`` (in autocommit mode) to `INSTANCE_CHANGES_CHANNEL`."""
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(INSTANCE_CHANGES_CHANNEL)))
