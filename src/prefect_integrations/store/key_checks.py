"""Checks of stored credentials: rows per key id, verification, envelope shape upgrade.

`count_keys` counts the rows per key id (the ``key_id`` column) and those whose key is
not in the keyring. `verify_keys` decrypts every row in the database, in batches, and
reports the rows that do not decrypt under their key id, do not parse as reads parse
them, or are not bound to their row: with plain ``pgp_sym_decrypt`` while every row of a
batch decrypts, with the subtransaction-per-row ``integration_try_decrypt`` only for a
batch where one does not.
`upgrade_shapes` rewrites rows still in envelope version 1 in the specification's
credentials shape, each through the vault with a compare-and-swap on
``credentials_version``, so a concurrent OAuth refresh is never overwritten. Key
re-encryption (`prefect_integrations.store.rekey`) runs all three.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from prefect_integrations.db import Database, translate_errors
from prefect_integrations.exceptions import CredentialsError
from prefect_integrations.keyring import Keyring
from prefect_integrations.store import audit, rekey_sql, vault
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.store.vault import ENVELOPE_VERSION

__all__ = [
    "KeyCounts",
    "KeyProbe",
    "count_keys",
    "key_counts",
    "probe_keys",
    "upgrade_shapes",
    "verify_keys",
]

_VERIFY_BATCH = 10_000


# --------------------------------------------------------------------------------------
# Counts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyCounts:
    """Instances with stored credentials per key id, and how many have an unknown key id.

    ``unknown`` counts the rows whose key id is not in the keyring (they cannot be read
    or rotated until their key is added back).
    """

    by_key: dict[str, int]
    unknown: int
    keyring_ids: tuple[str, ...]

    @property
    def total(self) -> int:
        """Every instance with stored credentials."""
        return sum(self.by_key.values())

    def in_keyring(self, key_id: str) -> bool:
        """True when ``key_id`` is in the keyring the counts were made with."""
        return key_id in self.keyring_ids

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (key ids and counts only)."""
        return {
            "by_key": [
                {"key_id": kid, "instances": n, "in_keyring": self.in_keyring(kid)}
                for kid, n in self.by_key.items()
            ],
            "total": self.total,
            "unknown": self.unknown,
        }


def count_keys(session: Session | Connection, keyring: Keyring) -> KeyCounts:
    """Count the instances with stored credentials per key id (the ``key_id`` column)."""
    with translate_errors("count credentials per key id"):
        by_key = {str(row.kid): int(row.n) for row in session.execute(rekey_sql.COUNTS)}
    ids = tuple(keyring.ids)
    unknown = sum(n for kid, n in by_key.items() if kid not in ids)
    return KeyCounts(by_key=by_key, unknown=unknown, keyring_ids=ids)


def key_counts(session: Session | Connection, keyring: Keyring) -> dict[str, int]:
    """Instances with stored credentials per key id (see `count_keys` for the unknown)."""
    return dict(count_keys(session, keyring).by_key)


@dataclass(frozen=True, slots=True)
class KeyProbe:
    """Key ids in use that the keyring lacks, and those whose key does not decrypt."""

    unknown: tuple[str, ...]
    wrong: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.unknown or self.wrong)


def probe_keys(
    session: Session | Connection,
    keyring: Keyring,
    *,
    instance_ids: Sequence[str] | None = None,
    integrations: Sequence[str] | None = None,
) -> KeyProbe:
    """Try the keyring on up to 3 rows of every key id in use (of some instances only).

    A key id the keyring lacks is ``unknown``; one where none of those rows decrypts with
    the keyring's key of that id is ``wrong`` (another key under the same id). A row
    whose ciphertext is damaged never fails the check; rows without a key id are left
    out. The plaintext never leaves the database.
    """
    params: dict[str, Any] = {
        "kids": keyring.ids,
        "keys": [key.get_secret_value() for _, key in keyring],
    }
    statement = rekey_sql.PROBE_KEYS
    if instance_ids or integrations:
        statement = rekey_sql.PROBE_KEYS_OF
        params["ids"] = list(instance_ids) if instance_ids else None
        params["integrations"] = list(integrations) if integrations else None
    with translate_errors("try the keyring on stored credentials"):
        rows = session.execute(statement, params).all()
    return KeyProbe(
        unknown=tuple(sorted(str(r.kid) for r in rows if not r.key_known)),
        wrong=tuple(sorted(str(r.kid) for r in rows if r.key_known and not r.decrypts)),
    )


# --------------------------------------------------------------------------------------
# Credentials shape upgrade
# --------------------------------------------------------------------------------------


def upgrade_shapes(
    db: Database,
    keyring: Keyring,
    *,
    actor: str,
    skip: Sequence[uuid.UUID] = (),
    batch_size: int = 500,
    lock_wait: float = 60.0,
) -> tuple[int, list[tuple[str, str]]]:
    """Rewrite every row below envelope version `ENVELOPE_VERSION` in the spec shape.

    Each row, in its own short transaction: lock it (rows locked by others or under a
    refresh lease are retried later), decrypt it through the vault (audited, purpose
    ``keys.upgrade``; converted to the specification's shape on the way), store it again
    with a compare-and-swap on ``credentials_version`` and audit ``credentials.upgrade``.
    Rows in ``skip`` (those key rotation failed) are left alone. Returns the number of
    rows upgraded and ``(instance_id, reason)`` of the rows that could not be: decryption
    failures (``upgrade_failed``) and rows still held by others after ``lock_wait``
    seconds without progress (``locked``). Nothing is lost: a row that fails keeps its
    stored credentials, which stay readable.
    """
    upgraded = 0
    failed: list[tuple[str, str]] = []
    done: list[uuid.UUID] = list(skip)
    waiting_since: float | None = None
    delay = 0.05
    while True:
        pending: list[tuple[uuid.UUID, str]] = []
        after: uuid.UUID | None = None
        progress = False
        while True:
            with db.transaction("list credentials to upgrade") as session:
                rows = list(
                    session.execute(
                        rekey_sql.OLD_SHAPE_ROWS,
                        {
                            "v": str(ENVELOPE_VERSION),
                            "skip": done,
                            "after": after,
                            "batch": batch_size,
                        },
                    )
                )
            if not rows:
                break
            after = rows[-1].id
            for row in rows:
                outcome = _upgrade_one(db, keyring, row.id, row.instance_id, actor)
                if outcome == "upgraded":
                    upgraded += 1
                    progress = True
                    done.append(row.id)
                elif outcome == "gone":
                    progress = True
                    done.append(row.id)
                elif outcome == "busy":
                    pending.append((row.id, row.instance_id))
                else:
                    failed.append((row.instance_id, rekey_sql.UPGRADE_FAILED))
                    done.append(row.id)
        if not pending:
            return upgraded, failed
        now = time.monotonic()
        if waiting_since is None or progress:
            waiting_since = now
        if now - waiting_since >= lock_wait:
            failed.extend((instance_id, rekey_sql.LOCKED) for _, instance_id in pending)
            return upgraded, failed
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _upgrade_one(
    db: Database, keyring: Keyring, row_id: uuid.UUID, instance_id: str, actor: str
) -> str:
    """Upgrade one row: ``upgraded``, ``gone`` (done by someone else), ``busy`` or ``failed``."""
    v = str(ENVELOPE_VERSION)
    with db.transaction(f"upgrade the credentials of '{instance_id}'") as session:
        locked = session.execute(rekey_sql.LOCK_OLD, {"id": row_id, "v": v}).first()
        if locked is None:
            still_old = session.execute(rekey_sql.STILL_OLD, {"id": row_id, "v": v}).first()
            return "busy" if still_old is not None else "gone"
        if locked.leased:
            return "busy"
        try:
            creds = vault.fetch_credentials(
                session, keyring, instance_id, actor=actor, purpose="keys.upgrade"
            )
        except CredentialsError:
            return "failed"  # audited by the vault; the row is left as it is
        version = vault.store_credentials(
            session,
            keyring,
            instance_id,
            creds.reveal(),
            expected_version=int(locked.credentials_version),
        )
        if version is None:
            return "gone"  # cannot happen under the row lock; someone else wrote v2
        audit.record(
            session,
            action=AuditAction.CREDENTIALS_UPGRADE,
            actor=actor,
            instance_id=instance_id,
            integration_id=locked.integration_id,
            details={"to_version": ENVELOPE_VERSION, "credentials_version": version},
        )
    return "upgraded"


# --------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------


def verify_keys(db: Database, keyring: Keyring) -> tuple[int, list[tuple[str, str]]]:
    """Check that every stored credential decrypts under its key id and is bound to its row.

    Returns the number of rows that are fine and ``(instance_id, reason)`` for the others
    (reasons as for rotation, plus ``key_id_mismatch``: the ``key_id`` column differs from
    the envelope's key id). The plaintext is parsed as reads parse it (as jsonb), so a row
    reads refuse (a lone surrogate or NUL escape) is ``malformed``, not fine. Decrypts in
    the database, in batches in id order, one short read-only transaction each; nothing
    secret leaves the database.
    """
    params: dict[str, Any] = {
        "kids": keyring.ids,
        "keys": [key.get_secret_value() for _, key in keyring],
        "batch": _VERIFY_BATCH,
    }
    ok = 0
    problems: list[tuple[str, str]] = []
    after: uuid.UUID | None = None
    with translate_errors("verify stored credentials", url=db.url), db.engine.connect() as conn:
        while True:
            fine, last_id, found = _verify_batch(conn, params, after)
            if last_id is None:
                break
            ok += fine
            problems.extend(found)
            after = last_id
    return ok, problems


def _verify_batch(
    conn: Connection, params: dict[str, Any], after: uuid.UUID | None
) -> tuple[int, uuid.UUID | None, list[tuple[str, str]]]:
    """Verify the batch after ``after``: (rows fine, last id or None when done, problems).

    Plain decrypt first (a wrong key or corrupt data fails the statement), then the safe
    form (such rows reported, a subtransaction per row), then row by row.
    """
    if after is None:
        statements = (rekey_sql.VERIFY_FIRST, rekey_sql.VERIFY_FIRST_SAFE)
    else:
        statements = (rekey_sql.VERIFY_NEXT, rekey_sql.VERIFY_NEXT_SAFE)
    for statement in statements:
        try:
            with rekey_sql.keyed_transaction(conn):
                row = conn.execute(statement, {**params, "after": after}).one()
        except sa_exc.DBAPIError as exc:
            if not rekey_sql.is_data_error(exc):
                raise
            continue
        found = list(zip(row.problem_instances, row.problem_reasons, strict=True))
        return int(row.ok), row.last_id, found
    # A ciphertext that is not base64 or a plaintext that is not JSON failed the batch:
    # check it row by row.
    with rekey_sql.keyed_transaction(conn):
        candidates = list(conn.execute(rekey_sql.VERIFY_IDS, {**params, "after": after}))
    ok = 0
    found = []
    for candidate in candidates:
        try:
            with rekey_sql.keyed_transaction(conn):
                one = conn.execute(
                    rekey_sql.VERIFY_ONE, {**params, "only": candidate.id}
                ).one_or_none()
        except sa_exc.DBAPIError as exc:
            if not rekey_sql.is_data_error(exc):
                raise
            found.append((candidate.instance_id, rekey_sql.data_error_reason(exc)))
            continue
        if one is None:  # deleted meanwhile
            continue
        if one.reason is None:
            ok += 1
        else:
            found.append((one.instance_id, one.reason))
    return ok, (candidates[-1].id if candidates else None), found
