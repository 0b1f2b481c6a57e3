"""The sealer: chains the audit rows appended since it last ran.

An append only numbers and stamps a row (`audit_chain`); sealing gives the rows a place
in a chain. `seal` calls the database function ``integration_audit_seal``
(`audit_chain.SEAL_FUNCTION`), which runs as the table's owner: the roles may call it
but may not UPDATE the log themselves, so a role can neither seal a row out of order
nor give it a wrong hash. Under the chain's transaction-level advisory lock it reads
the chain's last row (its head), waits, then hashes the rows not sealed yet in id order
from the head's id on (the primary key: every row before it is sealed) with the formula
`audit_verify` recomputes in Python, and fills ``version``, ``chain``, ``seq``,
``prev_hash`` and ``hash``, the only UPDATE the guard lets through. Sealers wait for
each other, so the chain never forks. Rows are tamper-evident once sealed; until then
the guard and the grants keep them as written.

A chain's ids grow with its seq (`audit_verify` reports a row that breaks this as
reordered), so the sealer never seals a row while one with a lower id may still commit.
A row's id default takes its transaction's id before it numbers the row; the sealer
reads the newest id, then waits until every transaction of this database that holds a
transaction id at that moment (prepared ones included) has ended. Each of them drew its
row ids after taking its transaction id, so every row up to the newest is then committed
or never will be. A transaction that stays open longer than ``wait`` seconds stops the
sealer (`SealWaitTimeout`): nothing is sealed and the next run tries again.

`seal` works in the caller's transaction; `seal_pending` commits a transaction per
batch, for a backlog of any size. `seal_rows` seals given rows into a chain of the
caller's choosing, in Python, for an archive's cut (the table's owner only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from prefect_integrations.db import Database, translate_errors
from prefect_integrations.exceptions import AuditError
from prefect_integrations.models import audit_log
from prefect_integrations.store.audit_chain import LOCK_CLASS, SEAL_CHAIN, hash_of

__all__ = [
    "PAGE",
    "UNSEALED",
    "WAIT",
    "SealReport",
    "SealWaitTimeout",
    "newest_id",
    "seal",
    "seal_pending",
    "seal_rows",
]

#: Rows an archive's cut seal reads at a time.
PAGE = 5_000
#: Seconds the sealer waits for transactions that may still append below its newest id.
WAIT = 60.0
#: The version of the hash formula the sealer writes.
_VERSION = 2

#: The rows not sealed yet, as a SQL condition: every chain column empty (a row with some
#: of them set is not the sealer's; `audit_verify` reports it).
UNSEALED = """seq IS NULL AND chain IS NULL AND version IS NULL AND hash IS NULL
   AND prev_hash IS NULL"""

_SEAL = sa.text(
    "SELECT sealed_rows, head_seq, head_hash "
    "FROM integration_audit_seal(CAST(:upto AS bigint), CAST(:most AS integer), "
    "CAST(:wait AS double precision))"
)
_NEWEST = sa.text(f"SELECT coalesce(max(id), 0) FROM {audit_log.name}")
# Sets the transaction's lock_timeout, returning the one before.
_LOCK_TIMEOUT = sa.text(
    "SELECT current_setting('lock_timeout') AS before, "
    "set_config('lock_timeout', CAST(:ms AS text), true)"
)
#: SQLSTATE of the sealer's wait running out (``lock_not_available``).
_WAITED_OUT = "55P03"

_LOCK = sa.text("SELECT pg_advisory_xact_lock(:cls, :chain)")
_HEAD = sa.text(
    f"SELECT id, seq, hash FROM {audit_log.name} WHERE chain = :chain AND seq IS NOT NULL "
    "ORDER BY seq DESC LIMIT 1"
)
# Given rows to seal, in id order, with the version, chain and seq they get.
_ROWS = sa.text(
    f"""
    SELECT p.*, {_VERSION} AS version, CAST(:chain AS smallint) AS chain,
           CAST(:seq AS bigint) + row_number() OVER (ORDER BY p.id) AS seq
      FROM (SELECT id, (occurred_at AT TIME ZONE 'UTC')::text AS occurred_at, actor,
                   db_role, action, instance_id, integration_id, outcome,
                   details::text AS details
              FROM {audit_log.name}
             WHERE {UNSEALED} AND id = ANY(CAST(:ids AS bigint[]))) p
     ORDER BY p.id
    """
)
# The page's hashes arrive as one string of 32-byte digests in its order; each row's
# previous hash is the digest before its own (the chain's head for the first).
_FILL = sa.text(
    f"""
    UPDATE {audit_log.name} l
       SET version = {_VERSION}, chain = :chain, seq = CAST(:seq AS bigint) + u.n,
           hash = substring(CAST(:hashes AS bytea) FROM u.at FOR 32),
           prev_hash = CASE WHEN u.n = 1 THEN CAST(:prev AS bytea)
                            ELSE substring(CAST(:hashes AS bytea) FROM u.at - 32 FOR 32) END
      FROM (SELECT id, n, CAST(n AS int) * 32 - 31 AS at
              FROM unnest(CAST(:ids AS bigint[])) WITH ORDINALITY AS o(id, n)) u
     WHERE l.id = u.id AND l.seq IS NULL
    """
)


class SealWaitTimeout(AuditError):
    """Transactions that may still append below the sealer's newest id stayed open."""


@dataclass(frozen=True, slots=True)
class SealReport:
    """What a sealer did: rows sealed, into which chain, its head after."""

    rows: int
    chain: int
    seq: int
    head: str | None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"rows": self.rows, "chain": self.chain, "seq": self.seq, "head": self.head}


def _sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def seal(
    conn: Session | Connection,
    *,
    limit: int | None = None,
    upto: int | None = None,
    wait: float = WAIT,
) -> SealReport:
    """Seal the rows not sealed yet into `SEAL_CHAIN`, in the caller's transaction.

    Every row up to the newest this transaction sees (or ``upto``), in id order, at most
    ``limit`` of them, once no transaction can still add one below (waiting up to
    ``wait`` seconds, see the module). The chain stays held until the transaction ends.
    """
    if upto is None:
        upto = newest_id(conn)
    most = limit if limit is not None else 2**31 - 1
    try:
        with translate_errors("seal the audit log"):
            # waiting for the chain's lock (another sealer, an archive) counts in ``wait``
            ms = str(max(1, int(wait * 1000)))
            before = conn.execute(_LOCK_TIMEOUT, {"ms": ms}).scalar_one()
            row = conn.execute(_SEAL, {"upto": upto, "most": most, "wait": wait}).one()
            conn.execute(_LOCK_TIMEOUT, {"ms": before})
    except sa_exc.DBAPIError as exc:  # translate_errors re-raises what it does not know
        if _sqlstate(exc) != _WAITED_OUT:
            raise
        raise SealWaitTimeout(_waited_out(wait)) from None
    head = None if row.head_hash is None else bytes(row.head_hash).hex()
    return SealReport(int(row.sealed_rows), SEAL_CHAIN, int(row.head_seq), head)


def _waited_out(wait: float) -> str:
    return (
        f"Cannot seal the audit log: a transaction that may still append to it, or another "
        f"sealer, stayed open for more than {wait:g} s; nothing was sealed, the next run "
        "tries again"
    )


def seal_pending(db: Database, *, batch: int = 50_000, wait: float = WAIT) -> SealReport:
    """Seal every row appended before the call, ``batch`` rows per transaction."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    with db.transaction("seal the audit log") as session:
        upto = newest_id(session)
    total = 0
    while True:
        with db.transaction("seal the audit log") as session:
            report = seal(session, limit=batch, upto=upto, wait=wait)
        total += report.rows
        if report.rows < batch:
            return SealReport(total, report.chain, report.seq, report.head)


def seal_rows(conn: Session | Connection, chain: int, ids: Sequence[int]) -> SealReport:
    """Seal the rows ``ids`` (not sealed yet) into ``chain`` now, in id order.

    For a chain no other row goes to, as an archive's cut; ids must be above the chain's
    last row's. Needs the table's owner (the roles may not UPDATE the log).
    """
    with translate_errors("seal the audit log"):
        conn.execute(_LOCK, {"cls": LOCK_CLASS, "chain": chain})
        # the text of timestamps, whatever the session's settings
        conn.execute(sa.text("SELECT set_config('DateStyle', 'ISO, YMD', true)"))
        head = conn.execute(_HEAD, {"chain": chain}).one_or_none()
        seq, prev = (0, None) if head is None else (int(head.seq), bytes(head.hash))
        sealed = 0
        for start in range(0, len(ids), PAGE):
            rows = conn.execute(
                _ROWS, {"ids": list(ids[start : start + PAGE]), "chain": chain, "seq": seq}
            ).all()
            first = prev
            digests = []
            for row in rows:
                prev = hash_of(prev, row)
                digests.append(prev)
            filled = conn.execute(
                _FILL,
                {
                    "chain": chain,
                    "seq": seq,
                    "prev": first,
                    "hashes": b"".join(digests),
                    "ids": [row.id for row in rows],
                },
            )
            if filled.rowcount != len(rows):  # type: ignore[attr-defined]
                raise AuditError(f"Audit rows changed while they were sealed into chain {chain}")
            seq += len(rows)
            sealed += len(rows)
    return SealReport(sealed, chain, seq, None if prev is None else prev.hex())


def newest_id(conn: Session | Connection) -> int:
    """The id of the newest row (0 when none): every row a sealer may seal is up to it."""
    with translate_errors("read the audit log"):
        return int(conn.execute(_NEWEST).scalar_one())
