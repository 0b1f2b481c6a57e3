"""Key re-encryption (``keys rotate``): re-encrypt stored credentials to the primary key, online.

`rotate_keys` walks the instances whose ``key_id`` is not the primary key id in batches
(keyset order on ``id``). Each batch is one short transaction holding one SQL statement
that

1. claims the batch with ``FOR UPDATE SKIP LOCKED`` (a concurrent call, refresh or second
   rotation run is never waited for and no row is processed twice),
2. decrypts each row with the key its envelope names (keys arrive only as bind-parameter
   arrays, as in `vault`),
3. checks that the plaintext is a credentials document bound to the row's own
   ``instance_id``,
4. re-encrypts the unchanged plaintext under the primary key and writes the envelope's
   ``ct`` and ``kid`` and the ``key_id`` column (the rest of the envelope, and
   ``credentials_version``, stay as they are: the OAuth compare-and-swap is unaffected),
5. appends one ``keys.rotate`` audit row for the batch (rows rotated, from which key ids,
   to which, rows failed; outcome ``failure`` when none of the batch could be rotated) and
   one per failed row.

Rows that fail (``unknown_key_id``, ``undecryptable``, ``malformed``,
``binding_mismatch``) are left untouched, reported, and not picked again in the same run.
The statement decrypts with plain ``pgp_sym_decrypt``, so a wrong key or corrupt data
fails it as a whole (nothing written); the batch is then run again with
``integration_try_decrypt``, which yields NULL for such a row (a subtransaction per row,
which the plain form saves every batch without one), and a batch that still fails (a
ciphertext that is not base64, a plaintext that is not JSON) is redone row by row.
A batch is committed on its own, so a crash or a lost connection loses at most the batch
in flight, which the next run redoes.

Then rows still in envelope version 1 (plaintext possibly in the flat shape of earlier
versions) are upgraded to the specification's credentials shape (`upgrade_shapes`): each
is decrypted through the vault (audited), converted and stored again as version 2 with a
compare-and-swap on ``credentials_version``, so a concurrent OAuth refresh is never
overwritten. After that every row is verified (`verify_keys`) and the rows per key id are
counted again. The statements are in `rekey_sql`, the checks in `key_checks`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from prefect_integrations.db import Database, translate_errors
from prefect_integrations.exceptions import DatabaseError
from prefect_integrations.keyring import Keyring
from prefect_integrations.store import audit, rekey_sql
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.store.key_checks import key_counts, upgrade_shapes, verify_keys
from prefect_integrations.store.rekey_sql import (
    BINDING_MISMATCH,
    KEY_ID_MISMATCH,
    LOCKED,
    MALFORMED,
    NO_KEY_ID,
    UNDECRYPTABLE,
    UNKNOWN_KEY_ID,
    UPGRADE_FAILED,
)
from prefect_integrations.store.vault import PGP_OPTIONS

__all__ = [
    "BINDING_MISMATCH",
    "KEY_ID_MISMATCH",
    "LOCKED",
    "MALFORMED",
    "NO_KEY_ID",
    "UNDECRYPTABLE",
    "UNKNOWN_KEY_ID",
    "UPGRADE_FAILED",
    "RotationReport",
    "rotate_keys",
]

_RETRIES = 5


@dataclass
class RotationReport:
    """What `rotate_keys` did.

    ``failed`` lists ``(instance_id, reason)`` of rows left untouched; ``problems`` the
    rows `verify_keys` found unreadable after the run (usually the same rows). Counts are
    per key id, before and after. ``seconds`` is the whole run, ``verify_seconds`` the
    verification pass within it. Never holds a key or a plaintext.
    """

    rotated: int = 0
    upgraded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    batches: int = 0
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    verified: int = 0
    seconds: float = 0.0
    verify_seconds: float = 0.0
    primary: str = ""
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed and every row verified."""
        return not self.failed and not self.problems

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "primary": self.primary,
            "rotated": self.rotated,
            "upgraded": self.upgraded,
            "batches": self.batches,
            "failed": [{"instance_id": i, "reason": r} for i, r in self.failed],
            "before": dict(self.before),
            "after": dict(self.after),
            "verified": self.verified,
            "problems": [{"instance_id": i, "reason": r} for i, r in self.problems],
            "seconds": round(self.seconds, 3),
            "verify_seconds": round(self.verify_seconds, 3),
            "ok": self.ok,
        }


@dataclass
class _Batch:
    rotated: int = 0
    failed: list[tuple[uuid.UUID, str, str]] = field(default_factory=list)
    last_id: uuid.UUID | None = None
    committed: int = 0


def _run_statement(
    conn: Connection, statement: sa.TextClause, params: dict[str, Any], operation: str
) -> list[sa.Row[Any]]:
    """Run one batch statement in its own transaction, retrying deadlocks; commit."""
    for attempt in range(1, _RETRIES + 1):
        try:
            with rekey_sql.keyed_transaction(conn):
                return list(conn.execute(statement, params))
        except sa_exc.DBAPIError as exc:
            if rekey_sql.sqlstate(exc) not in rekey_sql.RETRY_SQLSTATES:
                raise
            if attempt == _RETRIES:
                raise DatabaseError(
                    f"Cannot {operation}: the batch kept conflicting with other transactions "
                    f"({rekey_sql.sqlstate(exc)}); run it again"
                ) from None
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _batch_result(row: sa.Row[Any]) -> _Batch:
    return _Batch(
        rotated=int(row.rotated),
        failed=list(zip(row.failed_ids, row.failed_instances, row.failed_reasons, strict=True)),
        last_id=row.last_id,
        committed=0 if row.last_id is None else 1,
    )


def _rotate_batch(
    conn: Connection, params: dict[str, Any], after: uuid.UUID | None, actor: str
) -> _Batch:
    """Rotate the batch after ``after``: plain decrypt, else safe decrypt, else row by row.

    The plain statement fails as a whole on one row's wrong key or corrupt ciphertext;
    the safe one then fails such rows and rotates the others, paying a subtransaction per
    row. A ciphertext that is not base64 or a plaintext that is not JSON fails both: the
    batch is then redone one row at a time to single the row out (`_isolate`).
    """
    if after is None:
        statements = (rekey_sql.ROTATE_FIRST, rekey_sql.ROTATE_FIRST_SAFE)
    else:
        statements = (rekey_sql.ROTATE_NEXT, rekey_sql.ROTATE_NEXT_SAFE)
    for statement in statements:
        try:
            rows = _run_statement(conn, statement, {**params, "after": after}, "rotate a batch")
        except sa_exc.DBAPIError as exc:
            if not rekey_sql.is_data_error(exc):
                raise
            continue  # nothing of the batch was written: its transaction rolled back
        return _batch_result(rows[0])
    return _isolate(conn, params, after, actor)


def _isolate(
    conn: Connection, params: dict[str, Any], after: uuid.UUID | None, actor: str
) -> _Batch:
    """Process the batch after ``after`` row by row; a row that still errors is failed."""
    select = rekey_sql.PENDING_ROWS if after is None else rekey_sql.PENDING_AFTER
    with rekey_sql.keyed_transaction(conn):
        candidates = list(conn.execute(select, {**params, "after": after}))
    batch = _Batch()
    for candidate in candidates:
        batch.last_id = candidate.id
        try:
            rows = _run_statement(
                conn, rekey_sql.ROTATE_ONE, {**params, "only": candidate.id}, "rotate one row"
            )
        except sa_exc.DBAPIError as exc:
            if not rekey_sql.is_data_error(exc):
                raise
            reason = rekey_sql.data_error_reason(exc)
            with rekey_sql.keyed_transaction(conn):
                _record_failure(conn, actor, candidate, reason, params["primary"])
            batch.failed.append((candidate.id, candidate.instance_id, reason))
            continue
        one = _batch_result(rows[0])  # nothing claimed: locked by others, comes back later
        batch.committed += one.committed
        batch.rotated += one.rotated
        batch.failed.extend(one.failed)
    return batch


def _record_failure(conn: Connection, actor: str, row: Any, reason: str, primary: str) -> None:
    """Audit one row that could not be re-encrypted (``row``: id, kid and integration)."""
    audit.record(
        conn,
        action=AuditAction.KEYS_ROTATE,
        actor=actor,
        outcome="failure",
        instance_id=row.instance_id,
        integration_id=row.integration_id,
        details={"reason": reason, "key_id": row.kid, "to": primary},
    )


def _give_up_on_locked(
    conn: Connection, params: dict[str, Any], actor: str
) -> list[tuple[uuid.UUID, str, str]]:
    """Report (and audit) the rows still pending after waiting too long for their locks."""
    failed: list[tuple[uuid.UUID, str, str]] = []
    after: uuid.UUID | None = None
    while True:
        select = rekey_sql.PENDING_ROWS if after is None else rekey_sql.PENDING_AFTER
        with rekey_sql.keyed_transaction(conn):
            rows = list(conn.execute(select, {**params, "after": after}))
            for row in rows:
                _record_failure(conn, actor, row, rekey_sql.LOCKED, params["primary"])
                failed.append((row.id, row.instance_id, rekey_sql.LOCKED))
        if not rows:
            return failed
        after = rows[-1].id


def rotate_keys(
    db: Database,
    keyring: Keyring,
    *,
    actor: str,
    batch_size: int = 5000,
    on_batch: Callable[[int], None] | None = None,
    lock_wait: float = 60.0,
) -> RotationReport:
    """Re-encrypt every stored credential not under the primary key to the primary key.

    Online and resumable: one short transaction per batch of ``batch_size`` rows, rows
    locked by others are skipped and come back later, and a rerun continues where a
    killed run stopped. ``on_batch`` is called after each committed batch with the number
    of rows it rotated. Rows still locked by others after ``lock_wait`` seconds without
    progress are reported as ``locked``. Failed rows are left untouched and reported;
    they are audited, as is each batch. Rows still in envelope version 1 are then
    rewritten in the specification's credentials shape (`upgrade_shapes`; counted in
    ``upgraded``). A batch aborted by a deadlock (its row locks
    against another transaction's, or against an audit chain when all of them are busy)
    is retried. Raises `DatabaseUnavailable` when the connection is lost (nothing
    committed is lost; run it again). Uses one connection for the whole run.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    started = time.monotonic()
    primary = keyring.primary_id
    report = RotationReport(primary=primary)
    skip: list[uuid.UUID] = []
    params: dict[str, Any] = {
        "primary": primary,
        "new_key": keyring.primary.get_secret_value(),
        "opts": PGP_OPTIONS,
        "kids": keyring.ids,
        "keys": [key.get_secret_value() for _, key in keyring],
        "actor": actor,
        "batch": batch_size,
        "skip": skip,
    }

    def take(failed: Sequence[tuple[uuid.UUID, str, str]]) -> None:
        for row_id, instance_id, reason in failed:
            skip.append(row_id)
            report.failed.append((instance_id, reason))

    with (
        translate_errors("rotate encryption keys", url=db.url),
        db.engine.connect() as conn,
    ):
        with rekey_sql.keyed_transaction(conn):
            report.before = key_counts(conn, keyring)
        after: uuid.UUID | None = None
        waiting_since: float | None = None
        last_pending: int | None = None
        delay = 0.05
        while True:
            batch = _rotate_batch(conn, params, after, actor)
            if batch.last_id is not None:
                report.batches += batch.committed
                report.rotated += batch.rotated
                take(batch.failed)
                after = batch.last_id
                waiting_since, last_pending, delay = None, None, 0.05
                if on_batch is not None:
                    on_batch(batch.rotated)
                continue
            with rekey_sql.keyed_transaction(conn):
                pending = int(conn.execute(rekey_sql.PENDING_COUNT, params).scalar_one())
            if pending == 0:
                break
            if after is not None:  # end of the id order: go round again for skipped rows
                after = None
                continue
            # Rows remain but all are locked by other transactions (another rotation run,
            # a refresh, a dying connection): wait while someone makes progress.
            now = time.monotonic()
            if waiting_since is None or (last_pending is not None and pending < last_pending):
                waiting_since = now
            last_pending = pending
            if now - waiting_since >= lock_wait:
                take(_give_up_on_locked(conn, params, actor))
                break
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    upgraded, upgrade_failed = upgrade_shapes(
        db, keyring, actor=actor, skip=list(skip), lock_wait=lock_wait
    )
    report.upgraded = upgraded
    report.failed.extend(upgrade_failed)
    with (
        translate_errors("count credentials per key id", url=db.url),
        db.engine.connect() as conn,
        conn.begin(),
    ):
        report.after = key_counts(conn, keyring)
    verify_started = time.monotonic()
    report.verified, report.problems = verify_keys(db, keyring)
    report.verify_seconds = time.monotonic() - verify_started
    report.seconds = time.monotonic() - started
    return report
