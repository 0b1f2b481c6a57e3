"""The heads of the audit log's chains as they are now, for a checkpoint.

One statement (one snapshot): per chain, its number of rows, its first and last seq and
the last row's hash, read through the ``(chain, seq)`` index. A sealer holds its chain
until it commits, so a snapshot never sees half of a seal. Rows not sealed yet are not
in a chain.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from prefect_integrations.db import translate_errors
from prefect_integrations.models import audit_log
from prefect_integrations.store.audit_verify import ChainHead

__all__ = ["chain_heads"]

_HEADS = sa.text(
    f"""
    WITH g AS (
      SELECT chain, count(*) AS rows, min(seq) AS first_seq, max(seq) AS seq
        FROM {audit_log.name} WHERE chain IS NOT NULL AND seq IS NOT NULL GROUP BY chain
    )
    SELECT g.chain, g.rows, g.first_seq, g.seq, l.hash
      FROM g JOIN {audit_log.name} l ON l.chain = g.chain AND l.seq = g.seq
     ORDER BY g.chain
    """
)


def chain_heads(session: Session) -> tuple[int, tuple[ChainHead, ...]]:
    """The log's number of rows and each chain's head (chains without rows left out)."""
    with translate_errors("read the audit log's chain heads"):
        rows = session.execute(_HEADS).all()
    return sum(int(r.rows) for r in rows), tuple(
        ChainHead(
            chain=int(r.chain),
            seq=int(r.seq),
            head=bytes(r.hash).hex(),
            rows=int(r.rows),
            first_seq=int(r.first_seq),
        )
        for r in rows
    )
