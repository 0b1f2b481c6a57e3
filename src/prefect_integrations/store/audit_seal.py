"""The sealer: chains the audit rows appended since it last ran.

An append only numbers and stamps a row (`audit_chain`); `seal` gives the rows a place
in a chain. Under the chain's transaction-level advisory lock it reads the chain's last
row (its head), then pages through the rows not sealed yet in id order from the head's
id on (the primary key: every row before it is sealed), computes each row's hash in
Python (`audit_chain.row_hash`, the formula `audit_verify` checks) and fills
``version``, ``chain``, ``seq``, ``prev_hash`` and ``hash`` of the page in one UPDATE,
the only UPDATE the guard lets through. Sealers of one chain wait for each other, so a
chain never forks. Rows are tamper-evident once sealed; until then the guard and the
grants keep them as written.

A chain's ids grow with its seq (`audit_verify` reports a row that breaks this as
reordered), so the sealer never seals a row while one with a lower id may still commit.
A row's default takes its transaction's id before it numbers the row; the sealer reads
the newest id it sees, then waits until every transaction running at that moment has
ended (`pg_xact_status`). Each of them drew its ids before, so every row up to that id
is then committed or never will be. A transaction that stays open longer than ``wait``
seconds stops the sealer (`SealWaitTimeout`): nothing is sealed and the next run tries
again.

`seal` works in the caller's transaction; `seal_pending` commits a transaction per
batch, for a backlog of any size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
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
]

#: Rows read, hashed and updated at a time.
PAGE = 5_000
#: Seconds the sealer waits for transactions that may still append below its newest id.
WAIT = 60.0
#: The version of the hash formula the sealer writes.
_VERSION = 2

_LOCK = sa.text("SELECT pg_advisory_xact_lock(:cls, :chain)")
_HEAD = sa.text(
    f"SELECT id, seq, hash FROM {audit_log.name} WHERE chain = :chain AND seq IS NOT NULL "
    "ORDER BY seq DESC LIMIT 1"
)
#: The rows not sealed yet, as a SQL condition: every chain column empty (a row with some
#: of them set is not the sealer's; `audit_verify` reports it).
UNSEALED = """seq IS NULL AND chain IS NULL AND version IS NULL AND hash IS NULL
   AND prev_hash IS NULL"""
# A page of rows to seal, in id order, with the version, chain and seq they get.
_PAGE = f"""
    SELECT p.*, {_VERSION} AS version, CAST(:chain AS smallint) AS chain,
           CAST(:seq AS bigint) + row_number() OVER (ORDER BY p.id) AS seq
      FROM (SELECT id, (occurred_at AT TIME ZONE 'UTC')::text AS occurred_at, actor,
                   db_role, action, instance_id, integration_id, outcome,
                   details::text AS details
              FROM {audit_log.name}
             WHERE {UNSEALED} AND {{which}}
             ORDER BY id
             LIMIT :limit) p
     ORDER BY p.id
"""
_PENDING = sa.text(_PAGE.format(which="id > :after AND id <= :upto"))
_PENDING_IDS = sa.text(_PAGE.format(which="id = ANY(CAST(:ids AS bigint[]))"))
# The page's hashes arrive as one string of 32-byte digests in its order; each row's
# previous hash is the digest before its own (the chain's head for the first).
_SEAL = sa.text(
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
# The transactions running now, other than this one.
_RUNNING = sa.text(
    """
    SELECT coalesce(array_agg(x::text), '{}') FROM pg_snapshot_xip(pg_current_snapshot()) x
     WHERE x IS DISTINCT FROM pg_current_xact_id_if_assigned()
    """
)
_STILL_RUNNING = sa.text(
    """
    SELECT coalesce(array_agg(x), '{}') FROM unnest(CAST(:xids AS text[])) x
     WHERE pg_xact_status(CAST(x AS xid8)) = 'in progress'
    """
)
_NEWEST = sa.text(f"SELECT coalesce(max(id), 0) FROM {audit_log.name}")


class SealWaitTimeout(AuditError):
    """Transactions that may still append below the sealer's newest id stayed open."""


def _wait_for_running(conn: Session | Connection, wait: float) -> None:
    """Wait until every transaction running now (but this one) has ended."""
    xids: list[str] = list(conn.execute(_RUNNING).scalar_one())
    deadline = time.monotonic() + wait
    delay = 0.002
    while xids:
        xids = list(conn.execute(_STILL_RUNNING, {"xids": xids}).scalar_one())
        if not xids:
            return
        if time.monotonic() >= deadline:
            raise SealWaitTimeout(
                f"Cannot seal the audit log: {len(xids)} transaction(s) that may still "
                f"append to it stayed open for more than {wait:g} s (transaction ids "
                f"{', '.join(sorted(xids)[:5])}); nothing was sealed, the next run tries again"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


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


def _seal_page(
    conn: Session | Connection, chain: int, rows: Sequence[Any], seq: int, prev: bytes | None
) -> tuple[int, bytes | None]:
    """Hash a page (numbered from ``seq`` + 1 by `_PAGE`) and fill its chain columns."""
    first = prev
    digests = []
    for row in rows:
        prev = hash_of(prev, row)
        digests.append(prev)
    conn.execute(
        _SEAL,
        {
            "chain": chain,
            "seq": seq,
            "prev": first,
            "hashes": b"".join(digests),
            "ids": [row.id for row in rows],
        },
    )
    return seq + len(rows), prev


def seal(
    conn: Session | Connection,
    *,
    chain: int = SEAL_CHAIN,
    ids: Sequence[int] | None = None,
    limit: int | None = None,
    upto: int | None = None,
    wait: float = WAIT,
) -> SealReport:
    """Seal the rows not sealed yet into ``chain``, in the caller's transaction.

    Every row up to the newest this transaction sees (or ``upto``), in id order, at most
    ``limit`` of them, once no transaction can still add one below (waiting up to
    ``wait`` seconds, see the module). ``ids``: only these rows, without waiting (for a
    chain no other row goes to, as an archive's cut). The chain stays held until the
    transaction ends.
    """
    with translate_errors("seal the audit log"):
        conn.execute(_LOCK, {"cls": LOCK_CLASS, "chain": chain})
        # the text of timestamps, whatever the session's settings
        conn.execute(sa.text("SELECT set_config('DateStyle', 'ISO, YMD', true)"))
        head = conn.execute(_HEAD, {"chain": chain}).one_or_none()
        seq, prev = (0, None) if head is None else (int(head.seq), bytes(head.hash))
        after = 0 if head is None else int(head.id)
        sealed = 0
        if ids is not None:
            for start in range(0, len(ids), PAGE):
                rows = conn.execute(
                    _PENDING_IDS,
                    {
                        "ids": list(ids[start : start + PAGE]),
                        "chain": chain,
                        "seq": seq,
                        "limit": PAGE,
                    },
                ).all()
                seq, prev = _seal_page(conn, chain, rows, seq, prev)
                sealed += len(rows)
        else:
            if upto is None:
                upto = newest_id(conn)
            _wait_for_running(conn, wait)
            while limit is None or sealed < limit:
                page = PAGE if limit is None else min(PAGE, limit - sealed)
                rows = conn.execute(
                    _PENDING,
                    {"after": after, "upto": upto, "limit": page, "chain": chain, "seq": seq},
                ).all()
                if not rows:
                    break
                seq, prev = _seal_page(conn, chain, rows, seq, prev)
                sealed += len(rows)
                after = int(rows[-1].id)
    return SealReport(sealed, chain, seq, None if prev is None else prev.hex())


def seal_pending(
    db: Database, *, chain: int = SEAL_CHAIN, batch: int = 50_000, wait: float = WAIT
) -> SealReport:
    """Seal every row appended before the call, ``batch`` rows per transaction."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    with db.transaction("seal the audit log") as session:
        upto = newest_id(session)
    total = 0
    while True:
        with db.transaction("seal the audit log") as session:
            report = seal(session, chain=chain, limit=batch, upto=upto, wait=wait)
        total += report.rows
        if report.rows < batch:
            return SealReport(total, chain, report.seq, report.head)


def newest_id(conn: Session | Connection) -> int:
    """The id of the newest row (0 when none): every row a sealer may seal is up to it."""
    with translate_errors("read the audit log"):
        return int(conn.execute(_NEWEST).scalar_one())
