"""Archiving: the SQL that plans a cut of each chain, reads the rows, and removes them.

`plan_cuts` finds, per chain, the last seq before which every row is older than a time;
`archived_rows` streams those rows in chain order (constant memory) for the archive
file; `cut_chain` appends a cut to one chain (an ``audit.archive`` row sealed at once
into that chain, naming ``through_seq`` and the hash of the last row it removes, signed
by the caller) and deletes the rows, in the caller's transaction: one chain per
transaction, so the sealer works on the other chains meanwhile. The guard function lets a DELETE
through only for rows a later cut of their chain covers (`audit_chain`). Archives run
one at a time: `archive_lock` holds a session-level advisory lock on a connection of
its own for the whole archive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from prefect_integrations.db import Database, translate_errors
from prefect_integrations.models import audit_log
from prefect_integrations.store.audit import AuditAction, AuditRow, record_one
from prefect_integrations.store.audit_chain import LOCK_CLASS, SEAL_CHAIN
from prefect_integrations.store.audit_seal import seal, seal_rows

__all__ = [
    "ARCHIVE_COLUMNS",
    "PlannedCut",
    "archive_lock",
    "archived_rows",
    "cut_chain",
    "plan_cuts",
]

#: The second key of the advisory lock archives take (chains use 0 to CHAINS - 1).
_ARCHIVE_LOCK = 1_000_000

#: The columns of an archived row, in the archive file's order.
ARCHIVE_COLUMNS = (
    "id",
    "version",
    "chain",
    "seq",
    "occurred_at",
    "actor",
    "db_role",
    "action",
    "instance_id",
    "integration_id",
    "outcome",
    "details",
    "prev_hash",
    "hash",
)


@dataclass(frozen=True, slots=True)
class PlannedCut:
    """The rows of ``chain`` from ``first_seq`` to ``through_seq`` (``rows`` of them)."""

    chain: int
    first_seq: int
    through_seq: int
    through_hash: str
    rows: int

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "chain": self.chain,
            "first_seq": self.first_seq,
            "through_seq": self.through_seq,
            "through_hash": self.through_hash,
            "rows": self.rows,
        }


@contextlib.contextmanager
def archive_lock(db: Database) -> Iterator[None]:
    """Wait until no other archive runs, and keep it so until the block ends."""
    keys = {"a": LOCK_CLASS, "b": _ARCHIVE_LOCK}
    with translate_errors("archive the audit log"), db.engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_advisory_lock(:a, :b)"), keys)
        connection.commit()
        try:
            yield
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(:a, :b)"), keys)
            connection.commit()


_PLAN = sa.text(
    f"""
    WITH g AS (
      SELECT chain, min(seq) AS first_seq, max(seq) AS last_seq,
             min(seq) FILTER (WHERE occurred_at >= :before) AS keep_from
        FROM {audit_log.name} WHERE chain IS NOT NULL AND seq IS NOT NULL GROUP BY chain
    ), p AS (
      SELECT chain, first_seq, coalesce(keep_from - 1, last_seq) AS through_seq FROM g
    )
    SELECT p.chain, p.first_seq, p.through_seq, l.hash,
           (SELECT count(*) FROM {audit_log.name} r
             WHERE r.chain = p.chain AND r.seq <= p.through_seq) AS rows
      FROM p JOIN {audit_log.name} l ON l.chain = p.chain AND l.seq = p.through_seq
     WHERE p.through_seq >= p.first_seq
     ORDER BY p.chain
    """
)


def plan_cuts(session: Session, before: datetime) -> list[PlannedCut]:
    """Per chain, the rows to archive, written before ``before``.

    From the chain's first row to the last one before which every row is older (a
    chain's order is its rows' order in time).
    """
    with translate_errors("plan the archive of the audit log"):
        rows = session.execute(_PLAN, {"before": before}).all()
    return [
        PlannedCut(
            int(r.chain), int(r.first_seq), int(r.through_seq), bytes(r.hash).hex(), int(r.rows)
        )
        for r in rows
    ]


def _cuts_table(cuts: Sequence[PlannedCut]) -> dict[str, list[int]]:
    return {"chains": [c.chain for c in cuts], "throughs": [c.through_seq for c in cuts]}


_ROWS = sa.text(
    f"""
    SELECT l.id, l.version, l.chain, l.seq,
           (l.occurred_at AT TIME ZONE 'UTC')::text AS occurred_at,
           l.actor, l.db_role, l.action, l.instance_id, l.integration_id, l.outcome,
           l.details::text AS details, l.prev_hash, l.hash
      FROM {audit_log.name} l
      JOIN unnest(CAST(:chains AS int[]), CAST(:throughs AS bigint[])) AS c(chain, through)
        ON l.chain = c.chain AND l.seq <= c.through
     ORDER BY l.chain, l.seq
    """
)


def archived_rows(session: Session, cuts: Sequence[PlannedCut]) -> Iterator[Any]:
    """The rows ``cuts`` cover, in chain and seq order, through a server-side cursor."""
    with translate_errors("read the audit rows to archive"):
        session.execute(sa.text("SELECT set_config('DateStyle', 'ISO, YMD', true)"))
        yield from session.execute(_ROWS, _cuts_table(cuts), execution_options={"yield_per": 2000})


_DELETE = sa.text(f"DELETE FROM {audit_log.name} WHERE chain = :chain AND seq <= :through")


def cut_chain(session: Session, planned: PlannedCut, *, actor: str, details: dict[str, Any]) -> int:
    """Append ``planned``'s cut (with ``details``) to its chain and delete its rows.

    Returns the rows deleted. The chain stays held by this transaction until it ends.
    """
    with translate_errors("archive the audit log"):
        # the chain first: a sealer holding it waits for transactions that hold an id
        session.execute(
            sa.text("SELECT pg_advisory_xact_lock(:cls, :chain)"),
            {"cls": LOCK_CLASS, "chain": planned.chain},
        )
        cut = record_one(
            session, AuditRow(action=AuditAction.AUDIT_ARCHIVE, actor=actor, details=details)
        )
        if planned.chain == SEAL_CHAIN:  # after the rows appended before it
            seal(session)
        else:
            seal_rows(session, planned.chain, [cut])
        result = session.execute(_DELETE, {"chain": planned.chain, "through": planned.through_seq})
        return int(result.rowcount)  # type: ignore[attr-defined]
